"""Milliseconds per training iteration of params.yaml's StarGAN on the current device: the fast
path the train stage uses and, on request, the official code's eager order beside it."""

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType

from emogan.config import Params, TrainConfig
from emogan.data.processed import Dataset, load_split
from emogan.device import resolve_device
from emogan.stargan.train import (
    C_DIM,
    Networks,
    build_networks,
    draw_targets,
    gradient_penalty,
    learning_rates,
    sample_batch,
    train_iteration,
    use_tf32,
)

THESIS_ITERATIONS = 200_000
ROUNDS = 5  # timed blocks per path, alternated so that a noisy machine slows both alike
PROFILED_G_UPDATES = 4
TOP_OPERATORS = 10


def bench_train(
    params: Params,
    data_dir: Path,
    iterations: int,
    warmup: int,
    compare_eager: bool = False,
    profile: bool = False,
) -> dict:
    """Time `iterations` iterations after `warmup` untimed ones (allocator, cuDNN autotuning,
    compilation). An iteration is one D update plus, every n_critic-th, one G update, as in
    training. With compare_eager, the official code's eager loop (official_iteration) is built
    beside the fast path in the same process and device, and the two are timed in alternating
    blocks. With profile, the fast path's operators are then profiled (profile_fast_path)."""
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
    if profile:
        report["profile"] = profile_fast_path(loops["fast"])
    return report


def profile_fast_path(loop: "_Loop") -> dict:
    """Where the fast path's time goes, over a few whole G updates: on a GPU, the share of the
    wall time the device is busy (far below 1: the Python side launching kernels is the limit,
    and CUDA graphs would pay; near 1: the kernels are, and the top operators say which), and
    the operators by their own time per iteration on the device (the CPU where there is none)."""
    steps = PROFILED_G_UPDATES * loop.cfg.n_critic
    on_cuda = loop.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        wall_s = loop.run(steps)
    averages = profiler.key_averages()
    # Operators carry the time of the kernels they launch as their own device time; the kernels
    # are events of their own too, counted once for how busy the device was.
    operators = [event for event in averages if event.device_type == DeviceType.CPU]
    own_us = {
        event.key: event.self_device_time_total if on_cuda else event.self_cpu_time_total
        for event in operators
    }
    top = sorted(own_us.items(), key=lambda item: item[1], reverse=True)[:TOP_OPERATORS]
    report = {
        "iterations": steps,
        "timed_on": "cuda" if on_cuda else "cpu",
        "wall_ms_per_iteration": round(wall_s * 1000 / steps, 2),
        "top_operators_ms_per_iteration": {key: round(us / 1000 / steps, 3) for key, us in top},
    }
    if on_cuda:
        kernels_us = sum(
            e.self_device_time_total for e in averages if e.device_type != DeviceType.CPU
        )
        report["device_busy_share"] = round(kernels_us / 1e6 / wall_s, 3)
    return report


def official_iteration(
    nets: Networks,
    x_real: torch.Tensor,
    label_org: torch.Tensor,
    cfg: TrainConfig,
    iteration: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """`train_iteration` in the order of passes of the official code (yunjey/stargan
    solver.py): D on the real, the fake and the interpolated batch, then every n_critic-th
    iteration G's translation and reconstruction, in float32. The same random draws, losses and
    updates, so the fast path is checked against it and timed beside it; the identity term,
    which the official losses lack, comes last as in train_iteration."""
    nets.set_learning_rates(*learning_rates(cfg, iteration))
    label_trg = draw_targets(label_org, cfg.target_sampling, generator)
    c_org = F.one_hot(label_org, C_DIM).float()
    c_trg = F.one_hot(label_trg, C_DIM).float()

    out_src, out_cls = nets.D(x_real)
    d_loss_real = -out_src.mean()
    d_loss_cls = F.cross_entropy(out_cls, label_org)

    x_fake = nets.G(x_real, c_trg)
    out_src, _ = nets.D(x_fake.detach())
    d_loss_fake = out_src.mean()

    alpha = torch.rand(x_real.size(0), 1, 1, 1, device=x_real.device, generator=generator)
    x_hat = (alpha * x_real + (1 - alpha) * x_fake.detach()).requires_grad_(True)
    out_src, _ = nets.D(x_hat)
    d_loss_gp = gradient_penalty(out_src, x_hat)

    d_loss = d_loss_real + d_loss_fake + cfg.lambda_cls * d_loss_cls + cfg.lambda_gp * d_loss_gp
    nets.d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    nets.d_optimizer.step()
    losses = {"D/loss_real": d_loss_real, "D/loss_fake": d_loss_fake,
              "D/loss_cls": d_loss_cls, "D/loss_gp": d_loss_gp}  # fmt: skip

    if (iteration + 1) % cfg.n_critic == 0:
        x_fake = nets.G(x_real, c_trg)
        out_src, out_cls = nets.D(x_fake)
        g_loss_fake = -out_src.mean()
        g_loss_cls = F.cross_entropy(out_cls, label_trg)

        x_reconst = nets.G(x_fake, c_org)
        g_loss_rec = (x_real - x_reconst).abs().mean()

        g_loss = g_loss_fake + cfg.lambda_rec * g_loss_rec + cfg.lambda_cls * g_loss_cls
        losses |= {"G/loss_fake": g_loss_fake, "G/loss_rec": g_loss_rec,
                   "G/loss_cls": g_loss_cls}  # fmt: skip
        if cfg.lambda_id:
            g_loss_id = (x_real - nets.G(x_real, c_org)).abs().mean()
            g_loss = g_loss + cfg.lambda_id * g_loss_id
            losses["G/loss_id"] = g_loss_id
        nets.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        nets.g_optimizer.step()
    return {name: value.detach() for name, value in losses.items()}


class _Loop:
    """A freshly built, identically seeded training that runs a given number of iterations:
    the fast path (build_networks' fast layout, train_iteration) or the official one."""

    def __init__(self, params: Params, data: Dataset, fast: bool) -> None:
        self.cfg, self.data = params.train, data
        self.device = data.images.device
        self.step = train_iteration if fast else official_iteration
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
            self.step(self.nets, x_real, label_org, self.cfg, self.iteration, self.generator)
            self.iteration += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def _prefix(path: str) -> str:
    return "" if path == "fast" else f"{path}_"
