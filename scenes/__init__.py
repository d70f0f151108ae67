"""Everything around the model: a scene (its files, its layout, its grid, its views) and a run (its
settings, its folder, its figures). deepvoxels.py holds the paper and never imports this folder.

Read in this order, the way `python train.py --data ./cube` goes:
  settings.py    the command line of a run: every setting, decided once and checked
  dataset.py     the one door: a --data folder and the model's sizes -> views, Config, log lines
  runs.py        run folders: where a command writes, one at a time, and its checkpoints
  layouts.py     the five layouts read into one `Scene` (DeepVoxels, NSVF, NeRF-synthetic,
                 instant-ngp/nerfstudio, COLMAP)
  files.py       every file a layout names, read and checked: numbers, cameras, poses, images
  grid.py        where the voxel grid goes, whether it encloses the object, the feature maps
  synthetic.py   the built-in scenes and the ray caster that draws them (the tests' ground truth)
  views.py       which views lie near which, orbits of cameras
  evaluation.py  a trained model against the views: PSNR, SSIM, the nearest-view baseline
  figures.py     what the scripts draw: cameras.png, previews, depth maps in colour
"""
