"""Milliseconds per training iteration of params.yaml's StarGAN on the current device."""

import time
from pathlib import Path

import torch

from emogan.config import Params
from emogan.data.processed import load_split
from emogan.device import resolve_device
from emogan.stargan.train import build_networks, sample_batch, train_iteration

THESIS_ITERATIONS = 200_000


def bench_train(params: Params, data_dir: Path, iterations: int, warmup: int) -> dict:
    """Time `iterations` iterations after `warmup` untimed ones (allocator, cuDNN autotuning).
    An iteration is one D update plus, every n_critic-th, one G update, as in training."""
    cfg = params.train
    device = resolve_device(cfg.device, "train.device")
    data = load_split(data_dir, "train", device)
    torch.manual_seed(cfg.seed)
    nets = build_networks(params, data.images.size(1), device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    start = 0.0
    for i in range(warmup + iterations):
        if i == warmup:
            _synchronize(device)
            start = time.perf_counter()
        x_real, label_org = sample_batch(data, cfg.batch_size, generator)
        train_iteration(nets, x_real, label_org, cfg, i, generator)
    _synchronize(device)
    ms = (time.perf_counter() - start) * 1000 / iterations
    return {
        "device": str(device),
        "layers": params.layers,
        "g_conv_dim": params.model.g_conv_dim,
        "d_conv_dim": params.model.d_conv_dim,
        "batch_size": cfg.batch_size,
        "n_critic": cfg.n_critic,
        "image_size": params.image_size,
        "ms_per_iteration": round(ms, 2),
        "projected_200k_iterations_min": round(ms * THESIS_ITERATIONS / 60_000, 1),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
