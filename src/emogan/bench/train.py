"""Milliseconds per training iteration of params.yaml's StarGAN on the current device: the fast
path the train stage uses and, on request, the official code's eager order beside it."""

import time
from pathlib import Path

import torch

from emogan.config import Params
from emogan.data.processed import Dataset, load_split
from emogan.device import resolve_device
from emogan.stargan.train import build_networks, sample_batch, train_iteration

THESIS_ITERATIONS = 200_000


def bench_train(
    params: Params, data_dir: Path, iterations: int, warmup: int, compare_eager: bool = False
) -> dict:
    """Time `iterations` iterations after `warmup` untimed ones (allocator, cuDNN autotuning).
    An iteration is one D update plus, every n_critic-th, one G update, as in training. With
    compare_eager, the eager reference loop is timed too, in the same process and device."""
    cfg = params.train
    device = resolve_device(cfg.device, "train.device")
    data = load_split(data_dir, "train", device)
    report = {
        "device": str(device),
        "layers": params.layers,
        "g_conv_dim": params.model.g_conv_dim,
        "d_conv_dim": params.model.d_conv_dim,
        "batch_size": cfg.batch_size,
        "n_critic": cfg.n_critic,
        "image_size": params.image_size,
    }
    # Eager first: the fast path switches on TF32 for the whole process on CUDA.
    paths = {"eager": False, "fast": True} if compare_eager else {"fast": True}
    for name, fast in paths.items():
        ms = _time_loop(params, data, iterations, warmup, fast)
        prefix = "" if name == "fast" else "eager_"
        report[f"{prefix}ms_per_iteration"] = round(ms, 2)
        report[f"{prefix}projected_200k_iterations_min"] = round(ms * THESIS_ITERATIONS / 60_000, 1)
    if compare_eager:
        report["speedup"] = round(report["eager_ms_per_iteration"] / report["ms_per_iteration"], 2)
    return report


def _time_loop(params: Params, data: Dataset, iterations: int, warmup: int, fast: bool) -> float:
    """Milliseconds per iteration of a freshly built, identically seeded training."""
    cfg = params.train
    device = data.images.device
    torch.manual_seed(cfg.seed)
    nets = build_networks(params, data.images.size(1), device, fast)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    start = 0.0
    for i in range(warmup + iterations):
        if i == warmup:
            _synchronize(device)
            start = time.perf_counter()
        x_real, label_org = sample_batch(data, cfg.batch_size, generator)
        train_iteration(nets, x_real, label_org, cfg, i, generator, fast)
    _synchronize(device)
    return (time.perf_counter() - start) * 1000 / iterations


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
