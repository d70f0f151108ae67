"""Where the time of one training step goes: each stage's forward and forward+backward, in fp32
and, where train.py's auto would use it (a GPU, a CPU with bf16 units), in bf16 mixed precision;
median of repeated runs; and one rendered view. Prints markdown tables
for docs/measurements.md; --profile adds the operators that cost the most (torch.profiler).

Each stage's arithmetic (GFLOP of its convolutions and matrix products, torch.utils.flop_counter) is
divided by its fp32 time and compared with this machine's 2048 x 2048 fp32 matmul rate: the share
of the matmul rate a stage reaches says whether it is bound by arithmetic or by something else, and
the step time on another CPU is about the same share of that CPU's matmul rate.

    python -m tools.benchmark                  # the default model sizes (on a GPU if there is one)
    python -m tools.benchmark --profile fp32   # ... and the 15 costliest operators of an fp32 step
    python -m tools.benchmark --grid_size 32 --channels 32 --device cuda
                                               # train.py's model-size flags work here too
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import deepvoxels as dv
from scenes import settings, views
from scenes.files import check_number


def median_ms(fn, device: str, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def matmul_gflops(device: str, repeats: int) -> float:
    """This machine's fp32 rate on a 2048 x 2048 matrix product, in GFLOP/s: a yardstick for the
    stages."""
    a, b = torch.randn(2, 2048, 2048, device=device).unbind()
    return 2 * 2048 ** 3 / median_ms(lambda: a @ b, device, repeats) / 1e6


def stage_timings(cfg: dv.Config, device: str, precision: str, repeats: int,
                  profile: bool = False) -> dict[str, tuple[float, float, float]]:
    """{stage: (forward ms, forward+backward ms, forward+backward GFLOP)} for one training step's
    inputs (1 source, 2 targets), and the time of one view rendered from a cached inpainted grid
    (with its forward GFLOP in the third place); with `profile`, print the costliest operators."""
    torch.manual_seed(0)
    model = dv.DeepVoxels(cfg).to(device)
    image = torch.rand(1, 3, cfg.img_size, cfg.img_size, device=device)
    source = torch.from_numpy(views.look_at(torch.tensor([0.0, -2.5, 0.8]).numpy(),
                                             torch.zeros(3).numpy())).float()[None].to(device)
    targets = views.orbit_poses(cfg.grid_center, 2.5, 2).to(device)
    n, C, h = cfg.grid_size, cfg.channels, cfg.feat_size

    def leaf(*shape):
        return torch.randn(*shape, device=device, requires_grad=True)

    features, grid, flat = leaf(1, C, h, h), leaf(1, C, n, n, n), leaf(2, C, h, h)
    volume, depths = dv.project(grid.detach().expand(2, -1, -1, -1, -1), targets, cfg)
    volume = volume.detach().requires_grad_()
    stages = {
        "2. feature extraction": lambda: model.encoder(image),
        "3. lifting": lambda: dv.lift(features, source, cfg)[0],
        "4. GRU integration": lambda: model.gru(grid, grid.detach())[0],
        "5. 3D inpainting": lambda: model.inpainting(grid),
        "6. projection": lambda: dv.project(grid.expand(2, -1, -1, -1, -1), targets, cfg)[0],
        "7. occlusion": lambda: model.occlusion(volume, depths)[0],
        "8. rendering": lambda: model.renderer(flat),
        "whole step (with Adam)": None,
    }
    optimizer = torch.optim.Adam(model.parameters(), fused=True)

    def whole_step():
        with dv.mixed_precision(device, precision):
            rgb = model(image, source, targets)["rgb"]
        loss = (rgb.float() - 0.5).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def gflop(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    model.eval()
    with torch.no_grad(), dv.mixed_precision(device, precision):
        inpainted = model.inpainting(model.grid)  # once: it depends on no view
        def render_one():
            return model.render_inpainted(inpainted, targets[:1])

        render_ms, render_gflop = median_ms(render_one, device, repeats), gflop(render_one)
    model.train()
    results = {}
    for name, forward in stages.items():
        if forward is None:
            results[name] = (float("nan"), median_ms(whole_step, device, repeats),
                             gflop(whole_step))
            continue

        def fwd(forward=forward):
            with dv.mixed_precision(device, precision):
                return forward()

        def fwd_bwd():
            fwd().float().square().mean().backward()

        results[name] = (median_ms(fwd, device, repeats), median_ms(fwd_bwd, device, repeats),
                         gflop(fwd_bwd))
    results["one rendered view (test time)"] = (render_ms, float("nan"), render_gflop)
    if profile:
        with torch.profiler.profile() as prof:
            for _ in range(repeats):
                whole_step()
        print(f"{precision}: the operators of {repeats} training steps, by their own time")
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=32,
            max_shapes_column_width=70))
    return results


def main(argv=None) -> None:
    parser = settings.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed runs per stage (default: 20)")
    settings.add_device_flags(parser, precision=False)  # it times both precisions
    parser.add_argument("--profile", choices=("fp32", "bf16"),
                        help="also print the costliest operators of a training step in this "
                             "precision")
    run_flags, rest = parser.parse_known_args(argv)
    check_number("--repeats", "the value", run_flags.repeats, (">=", 1))
    settings.check_device(run_flags.device)
    _, sizes = settings.parse_args(rest)  # the model-size flags of train.py
    size = sizes["img_size"]
    cfg = dv.Config(**{**settings.fixed_sizes(sizes), "focal": 1.25 * size, "cx": size / 2,
                       "cy": size / 2, "grid_scale": 1.25})
    with dv.flushed_denormals():
        report(cfg, run_flags.device, run_flags.repeats, run_flags.profile)


def report(cfg: dv.Config, device: str, repeats: int, profile: str | None) -> None:
    """Time every stage in fp32 (and in bf16 where train.py's auto uses it) and print the table."""
    fp32 = stage_timings(cfg, device, "fp32", repeats,
                         profile == "fp32")
    if dv.resolve_precision(device) == "bf16":  # where train.py's auto would use it
        bf16 = stage_timings(cfg, device, "bf16", repeats,
                             profile == "bf16")
    else:
        bf16 = {name: (float("nan"),) * 3 for name in fp32}
        print("bf16: not timed: this CPU has no bf16 units, where bf16 runs many times slower "
              "than fp32 (train.py and render.py use fp32 here)")
    matmul = matmul_gflops(device, repeats)
    print(f"torch {torch.__version__}, device {device}, median of "
          f"{repeats} runs; image {cfg.img_size}, features {cfg.feat_size}, "
          f"grid {cfg.grid_size}^3 x {cfg.channels}, D {cfg.depth_planes}")
    print(f"this CPU: {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, "
          f"{'with' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'} bf16 units, "
          f"fp32 2048 x 2048 matmul {matmul:.0f} GFLOP/s")
    print("| stage | fp32 forward ms | fp32 fwd+bwd ms | bf16 forward ms | bf16 fwd+bwd ms "
          "| bf16 speed-up | GFLOP | fp32 share of matmul rate |")
    print("|---|---|---|---|---|---|---|---|")
    for name in fp32:
        (f32, f32b, work), (b16, b16b, _) = fp32[name], bf16[name]
        # t != t: not measured (nan)
        cells = [f"{t:.1f}" if t == t else "" for t in (f32, f32b, b16, b16b)]
        speedup = f32b / b16b if f32b == f32b else f32 / b16  # nan: bf16 not timed
        seconds = (f32b if f32b == f32b else f32) / 1000
        # "" where no FLOPs are counted (grid_sample)
        share = f"{work / seconds / matmul:.0%}" if work > 0 else ""
        print(f"| {name} | {' | '.join(cells)} | "
              f"{f'{speedup:.2f}x' if speedup == speedup else ''} | {work:.2f} | {share} |")


if __name__ == "__main__":
    settings.run_command(main)
