"""The extra commands, each run from the project's top folder as `python -m tools.<name>`:

  viewer      drag a trained model around, click a pixel for its visibility weights;
              --architecture redraws assets/architecture.png
  ablation    the paper's occlusion ablation (Fig. 5): the softmax against the naive model
  benchmark   where the time of one training step goes, stage by stage
  handout     the students' notebook without its solutions; --kit DIR: the class kit, where
              students write five of the paper's stages and a grader checks them
"""
