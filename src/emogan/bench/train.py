"""Milliseconds per training iteration of params.yaml's StarGAN on the current device: the fast
path the train stage uses and, on request, the official code's eager order beside it."""

import time
from pathlib import Path

import torch

from emogan.config import Params
from emogan.data.processed import Dataset, load_split
from emogan.device import resolve_device
from emogan.stargan.train import (
    Networks,
    build_networks,
    sample_batch,
    train_iteration,
    use_tf32,
)

THESIS_ITERATIONS = 200_000
ROUNDS = 5  # timed blocks per path, alternated so that a noisy machine slows both alike


def bench_train(
    params: Params, data_dir: Path, iterations: int, warmup: int, compare_eager: bool = False
) -> dict:
    """Time `iterations` iterations after `warmup` untimed ones (allocator, cuDNN autotuning,
    compilation). An iteration is one D update plus, every n_critic-th, one G update, as in
    training. With compare_eager, the eager reference loop is built beside the fast path in the
    same process and device, and the two are timed in alternating blocks."""
    cfg = params.train
    device = resolve_device(cfg.device, "train.device")
    use_tf32(device)
    data = load_split(data_dir, "train", device)
    report = {
        "device": str(device),
        "layers": params.layers,
        "g_conv_dim": params.model.g_conv_dim,
        "d_conv_dim": params.model.d_conv_dim,
        "batch_size": cfg.batch_size,
        "n_critic": cfg.n_critic,
        "image_size": params.image_size,
        "precision": cfg.precision,
        "compile": cfg.compile,
    }
    paths = {"eager": False, "fast": True} if compare_eager else {"fast": True}
    loops = {name: _Loop(params, data, fast) for name, fast in paths.items()}
    for name, loop in loops.items():
        start = time.perf_counter()
        loop.run(warmup)
        report[f"{_prefix(name)}warmup_s"] = round(time.perf_counter() - start, 1)
    # Whole G updates in every block, so that each block has the run's mix of D and G steps.
    block = max(1, iterations // (ROUNDS * cfg.n_critic)) * cfg.n_critic
    seconds = dict.fromkeys(loops, 0.0)
    done = 0
    while done < iterations:
        steps = min(block, iterations - done)
        for name, loop in loops.items():
            seconds[name] += loop.run(steps)
        done += steps
    for name in loops:
        ms = seconds[name] * 1000 / iterations
        report[f"{_prefix(name)}ms_per_iteration"] = round(ms, 2)
        report[f"{_prefix(name)}projected_200k_iterations_min"] = round(
            ms * THESIS_ITERATIONS / 60_000, 1
        )
    if compare_eager:
        report["speedup"] = round(report["eager_ms_per_iteration"] / report["ms_per_iteration"], 2)
    return report


class _Loop:
    """A freshly built, identically seeded training that runs a given number of iterations."""

    def __init__(self, params: Params, data: Dataset, fast: bool) -> None:
        self.cfg, self.data, self.fast = params.train, data, fast
        self.device = data.images.device
        torch.manual_seed(self.cfg.seed)
        self.nets: Networks = build_networks(params, data, fast)
        self.generator = torch.Generator(self.device).manual_seed(self.cfg.seed)
        self.iteration = 0

    def run(self, steps: int) -> float:
        """Seconds for `steps` more iterations, the device's queue included."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            x_real, label_org = sample_batch(
                self.data, self.cfg.batch_size, self.generator, self.cfg.batch_sampling
            )
            train_iteration(
                self.nets, x_real, label_org, self.cfg, self.iteration, self.generator, self.fast
            )
            self.iteration += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def _prefix(path: str) -> str:
    return "" if path == "fast" else f"{path}_"
