"""StarGAN training: the official losses and update order, one D update per iteration and a G
update every n_critic, with the data resident on the training device.

`train_stargan` is the train stage: the loop from top to bottom, resumable from a checkpoint of
the same configuration (see checkpoint.py), stopped cleanly by SIGTERM, tracked in MLflow.
"""

import csv
import io
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from emogan import atomic
from emogan.config import Params, TrainConfig, params_yaml, project_root
from emogan.data.processed import Dataset, check_images, dataset_hash, load_split
from emogan.device import emulates_bf16
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.progress import progress_bar, stage_timing
from emogan.serving import REGISTERED_MODEL, model_description, model_input
from emogan.stargan import distributed
from emogan.stargan.checkpoint import (
    Progress,
    checkpoint_path,
    config_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from emogan.stargan.grid import encode_png, pick_faces, translation_grid
from emogan.stargan.model import (
    Discriminator,
    Generator,
    check_architecture,
    start_at_unit_gradient,
)
from emogan.stargan.trained import save_trained
from emogan.tracking import TrainingRun, resolve_tracking_uri, run_tags

C_DIM = len(EMOTIONS)
LOSS_NAMES = ("D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp",
              "G/loss_fake", "G/loss_rec", "G/loss_cls", "G/loss_id")  # fmt: skip
CALIBRATION_FACES = 256  # real training faces model.d_init's unit_gradient is measured on
PROGRESS_LOSSES = ("D/loss_cls", "G/loss_rec", "G/loss_cls")  # shown beside the progress bar


@dataclass
class Networks:
    G: Generator
    D: Discriminator
    g_optimizer: torch.optim.Adam
    d_optimizer: torch.optim.Adam

    def set_learning_rates(self, g_lr: float, d_lr: float) -> None:
        for group in self.g_optimizer.param_groups:
            group["lr"] = g_lr
        for group in self.d_optimizer.param_groups:
            group["lr"] = d_lr


def use_tf32(device: torch.device) -> None:
    """On CUDA, let matmuls too, not only cuDNN's convolutions (PyTorch's default), round their
    inputs to TF32, for the whole process: the train stage's setting."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def build_networks(params: Params, data: Dataset, fast: bool = True) -> Networks:
    """G, D and their Adam optimizers on data's device, for data's channel count; D starts as
    model.d_init says, calibrated on data's first CALIBRATION_FACES faces. On CUDA, `fast` lays
    the networks out channels-last (cuDNN's quickest convolutions) and fuses Adam's update into
    one kernel; with train.compile it compiles G on any device. The weights and the update are
    the same math either way."""
    check_architecture(params.image_size, params.d_layers)
    channels, device = data.images.size(1), data.images.device
    G = Generator(channels, C_DIM, params.model.g_conv_dim, params.g_layers).to(device)
    D = Discriminator(
        channels, params.image_size, C_DIM, params.model.d_conv_dim, params.d_layers
    ).to(device)
    if params.model.d_init == "unit_gradient":
        start_at_unit_gradient(D, data.images[:CALIBRATION_FACES])
    # On 2 CPU cores channels-last measured slower (layout copies around InstanceNorm) and the
    # fused update too.
    cuda = fast and device.type == "cuda"
    if cuda:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if fast and params.train.compile and can_compile(device):
        G.compile()  # in place, so state_dict keys stay those of the plain network
    cfg = params.train
    betas = (cfg.beta1, cfg.beta2)
    return Networks(
        G,
        D,
        torch.optim.Adam(G.parameters(), cfg.g_lr, betas, fused=cuda or None),
        torch.optim.Adam(D.parameters(), cfg.d_lr, betas, fused=cuda or None),
    )


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile can build G's kernels on device: on the CPU inductor compiles C++,
    so without a C++ compiler G is trained uncompiled, and the one line on stderr says why."""
    if device.type != "cpu":
        return True
    from torch._inductor import config as inductor_config
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        names = ", ".join(name for name in inductor_config.cpp.cxx if name)
        print(
            f"emogan: train.compile: no C++ compiler found ({names}; set $CXX), which "
            "torch.compile needs on the CPU; training G uncompiled",
            file=sys.stderr,
        )
        return False
    return True


def logged_losses(cfg: TrainConfig) -> tuple[str, ...]:
    """The loss terms a training with cfg reports, in log order: G/loss_id only when weighted."""
    return tuple(name for name in LOSS_NAMES if cfg.lambda_id or name != "G/loss_id")


def sample_batch(
    data: Dataset, batch_size: int, generator: torch.Generator, sampling: str = "images"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch with random horizontal flips, drawn on the data's device: every image
    equally likely ("images"), or every emotion ("emotions", train.batch_sampling)."""
    device = data.images.device
    if sampling == "emotions":
        weights = 1.0 / torch.bincount(data.labels, minlength=C_DIM)[data.labels].float()
        index = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    else:
        index = torch.randint(len(data.labels), (batch_size,), device=device, generator=generator)
    x = data.images[index]
    flip = torch.rand(batch_size, 1, 1, 1, device=device, generator=generator) < 0.5
    return torch.where(flip, x.flip(3), x), data.labels[index]


def draw_targets(
    label_org: torch.Tensor, sampling: str, generator: torch.Generator
) -> torch.Tensor:
    """The target emotion of each face of a batch: the batch's own labels shuffled, as the
    official code does ("shuffle"), or every emotion equally likely ("uniform")."""
    if sampling == "uniform":
        return torch.randint(C_DIM, label_org.shape, device=label_org.device, generator=generator)
    perm = torch.randperm(label_org.size(0), device=label_org.device, generator=generator)
    return label_org[perm]


def gradient_penalty(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(||dD(x)/dx||_2 - 1)^2, averaged over the batch."""
    grad = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)[0]
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def learning_rates(cfg: TrainConfig, iteration: int) -> tuple[float, float]:
    """Constant, then falling linearly to 0 over the last num_iters_decay iterations."""
    left = cfg.num_iters - iteration
    scale = min(1.0, left / cfg.num_iters_decay) if cfg.num_iters_decay else 1.0
    return cfg.g_lr * scale, cfg.d_lr * scale


def train_iteration(
    nets: Networks,
    x_real: torch.Tensor,
    label_org: torch.Tensor,
    cfg: TrainConfig,
    iteration: int,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One D update, and a G update when iteration + 1 is a multiple of n_critic: the official
    losses and updates in fewer passes. D scores the real, fake and interpolated batches in one
    pass, a G step translates once for both updates, and the passes run in cfg.precision.
    `emogan.bench.train.official_iteration` is the official code's order of passes, which this
    is checked against.

    Returns the detached loss terms as float32 device tensors: reading them is the caller's
    choice, so the loop need not wait for the device every iteration.
    """
    G, D = nets.G, nets.D
    nets.set_learning_rates(*learning_rates(cfg, iteration))
    label_trg = draw_targets(label_org, cfg.target_sampling, generator)
    c_org = F.one_hot(label_org, C_DIM).float()
    c_trg = F.one_hot(label_trg, C_DIM).float()
    g_step = (iteration + 1) % cfg.n_critic == 0
    passes = torch.autocast(x_real.device.type, torch.bfloat16, cfg.precision == "bf16")

    # G's weights do not change in D's update, so on a G step the translation D learns from is
    # the one G's update needs: its graph is kept instead of translating again.
    with passes, torch.set_grad_enabled(g_step):
        x_fake = G(x_real, c_trg)
    alpha = torch.rand(x_real.size(0), 1, 1, 1, device=x_real.device, generator=generator)
    x_hat = (alpha * x_real + (1 - alpha) * x_fake.detach()).requires_grad_(True)
    with passes:
        # D has no normalisation, so one pass over the three batches stacked is the same
        # function as three passes, with a third of the kernel launches and larger GEMMs.
        out_src, out_cls = D(torch.cat([x_real, x_fake.detach(), x_hat]))
        src_real, src_fake, src_hat = out_src.split(x_real.size(0))
        d_loss_real = -src_real.mean()
        d_loss_cls = F.cross_entropy(out_cls[: x_real.size(0)], label_org)
        d_loss_fake = src_fake.mean()
        d_loss_gp = gradient_penalty(src_hat, x_hat)
        d_loss = d_loss_real + d_loss_fake + cfg.lambda_cls * d_loss_cls + cfg.lambda_gp * d_loss_gp
    nets.d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    nets.d_optimizer.step()
    losses = {"D/loss_real": d_loss_real, "D/loss_fake": d_loss_fake,
              "D/loss_cls": d_loss_cls, "D/loss_gp": d_loss_gp}  # fmt: skip

    if g_step:
        with passes:
            out_src, out_cls = D(x_fake)
            g_loss_fake = -out_src.mean()
            g_loss_cls = F.cross_entropy(out_cls, label_trg)
            # The identity term is not in the official losses: the cycle term alone lets G hide
            # the face in noise that it decodes again; asking G to leave a face alone when the
            # target is its own emotion makes it edit only what the emotion changes
            # (BENCHMARKS.md). Both ask G for the own emotion, and G normalises per image, so
            # one pass over the two batches stacked is the same function as two passes.
            back = [x_fake, x_real] if cfg.lambda_id else [x_fake]
            x_back = G(torch.cat(back), c_org.repeat(len(back), 1)).split(x_real.size(0))
            g_loss_rec = (x_real - x_back[0]).abs().mean()
            g_loss = g_loss_fake + cfg.lambda_rec * g_loss_rec + cfg.lambda_cls * g_loss_cls
            losses |= {"G/loss_fake": g_loss_fake, "G/loss_rec": g_loss_rec,
                       "G/loss_cls": g_loss_cls}  # fmt: skip
            if cfg.lambda_id:
                g_loss_id = (x_real - x_back[1]).abs().mean()
                g_loss = g_loss + cfg.lambda_id * g_loss_id
                losses["G/loss_id"] = g_loss_id
        nets.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        nets.g_optimizer.step()
    return {name: value.detach().float() for name, value in losses.items()}


def train_stargan(
    params: Params,
    data_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    metrics_path: Path,
    loss_log: Path,
) -> dict:
    """Train G and D on data_dir's train split, resuming this configuration's checkpoint when
    there is one. Writes out_dir (generator.pt, discriminator.pt, config.json, run.json), the
    final losses and speed to metrics_path and the loss averages of every log step to loss_log;
    returns the metrics. A relative checkpoint_dir is taken from the project root.

    Under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1) every rank trains on its own batches
    with gradients averaged over the ranks, and rank 0 alone writes and logs (distributed.py)."""
    with distributed.session(params.train.device, "train.device") as world:
        return _train(params, world, data_dir, out_dir, checkpoint_dir, metrics_path, loss_log)


def _train(
    params: Params,
    world: distributed.World,
    data_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    metrics_path: Path,
    loss_log: Path,
) -> dict:
    started = time.perf_counter()
    cfg = params.train
    config = resolved_config(params)
    root = project_root()
    device = world.device
    data_dir = Path(data_dir)
    data = load_split(data_dir, "train", device)
    check_images(data, config["channels"], params.image_size, data_dir, "params.yaml")
    test = load_split(data_dir, "test", device)
    # The progress grids show fixed test faces, one per emotion, picked with their own generator.
    faces, face_labels = pick_faces(test.images, test.labels, C_DIM, cfg.seed)
    data_hash = dataset_hash(data_dir)
    config_id = config_fingerprint(config, data_hash)
    # Under the project root even when DVC runs a queued experiment in a temporary copy of it,
    # so that the next run of this configuration, wherever it runs, finds the checkpoint.
    ckpt_path = checkpoint_path(root / checkpoint_dir, config_id)

    use_tf32(device)
    torch.manual_seed(cfg.seed)
    nets = build_networks(params, data)
    generator = torch.Generator(device).manual_seed(cfg.seed)  # drives batches, targets, GP mix
    progress = load_checkpoint(ckpt_path, config_id, vars(nets), generator) or Progress()
    world.replicate((nets.G, nets.D), (nets.g_optimizer, nets.d_optimizer))
    world.split_stream(generator, cfg.seed, progress.iteration)
    start, loss_rows, saved_at = progress.iteration, progress.loss_rows, progress.iteration
    if start and world.is_main:
        print(f"resuming from iteration {start}", file=sys.stderr)
    if cfg.precision == "bf16" and emulates_bf16(device) and world.is_main:
        print(
            f"emogan: train.precision: bf16 is emulated on {device}, several times slower than "
            "fp32; use fp32 here",
            file=sys.stderr,
        )
    window = LossWindow(device, progress.window, world.mean)
    exp_name = os.environ.get("DVC_EXP_NAME")
    run = TrainingRun.disabled()  # one MLflow run: rank 0's
    if world.is_main:
        run = TrainingRun.start(
            params.mlflow,
            root,
            run_id=progress.run_id,
            run_name=f"stargan-L{params.layers}-{exp_name or config_id[:8]}",
            params={"layers": params.layers, **config},
            tags=run_tags(root, device, exp_name, data_hash, "emogan train")
            | {"fingerprint": config_id}
            | world.tags(),
        )
        run.log_dataset(data_dir, data_hash, "training")
        _write_loss_log(Path(loss_log), logged_losses(cfg), loss_rows)

    t0 = time.perf_counter()
    bar = progress_bar(cfg.num_iters, "train", "it", initial=start, show=world.is_main)
    try:
        with _sigterm_flag() as stop:
            for i in range(start, cfg.num_iters):
                done = i + 1  # logs, grids and checkpoints count iterations done
                x_real, label_org = sample_batch(
                    data, cfg.batch_size, generator, cfg.batch_sampling
                )
                window.add(done, train_iteration(nets, x_real, label_org, cfg, i, generator))
                if done % cfg.log_step == 0 or done == cfg.num_iters:
                    since, averages = window.read()  # the loop's only wait for the device
                    _check_finite(averages, since, done, ckpt_path, saved_at)
                    loss_rows.append({"iteration": done, **averages})
                    if world.is_main:
                        _append_loss_row(Path(loss_log), logged_losses(cfg), loss_rows[-1])
                    run.log_metrics(averages, step=done)
                    shown = [name for name in PROGRESS_LOSSES if name in averages]
                    postfix = {name: f"{averages[name]:.3g}" for name in shown}
                    bar.set_postfix(postfix, refresh=False)  # drawn by the update, with its count
                    bar.update(done - bar.n)
                if world.is_main and done % cfg.sample_step == 0:
                    grid = translation_grid(nets.G, faces, face_labels)
                    _log_bytes(run, f"iter_{done}.png", encode_png(grid), "samples")
                stopping = world.any(stop.is_set())  # all ranks stop at the same iteration
                if done % cfg.checkpoint_step == 0 or done == cfg.num_iters or stopping:
                    window.pool()  # one window for all ranks, so all take the same decision
                    # Never replace a good checkpoint with a diverged state.
                    _check_finite(
                        window.sums | _weights(nets), saved_at + 1, done, ckpt_path, saved_at
                    )
                    progress = Progress(done, run.run_id, loss_rows, window.state())
                    if world.is_main:
                        save_checkpoint(ckpt_path, config_id, vars(nets), generator, progress)
                    saved_at = done
                if stopping:
                    world.barrier()  # no rank exits, and torchrun kills none, before it is saved
                    raise Preempted(
                        f"train: stopped by SIGTERM at iteration {done}; checkpoint written to "
                        f"{ckpt_path}; run the stage again to resume"
                    )
    except BaseException as error:
        run.end("KILLED" if isinstance(error, Preempted | KeyboardInterrupt) else "FAILED")
        raise
    finally:
        bar.close()
    wall_s = time.perf_counter() - t0

    last = {name: value for name, value in loss_rows[-1].items() if name != "iteration"}
    metrics = {
        "iterations": cfg.num_iters,
        "resumed_from": start,
        "wall_s": round(wall_s, 3),
        "iterations_per_s": round((cfg.num_iters - start) / wall_s, 3),
        "device": str(device),
        **last,
    }
    if not world.is_main:
        return metrics
    run_info = {
        "mlflow_run_id": run.run_id,
        "tracking_uri": resolve_tracking_uri(params.mlflow, root),
        "fingerprint": config_id,
    }
    with atomic.atomic_path(Path(out_dir)) as work:
        work.mkdir()
        save_trained(work, nets.G, nets.D, config, run_info)
    metrics |= stage_timing(started)
    atomic.write_json(Path(metrics_path), metrics)
    run.log_artifact(Path(loss_log))
    _log_bytes(run, "params.yaml", params_yaml(params).encode("utf-8"))  # every key
    run.log_artifact(ckpt_path, "checkpoint")
    run.log_generator(
        Path(out_dir), config, model_input(faces[:2]), REGISTERED_MODEL, model_description(config)
    )
    run.end("FINISHED")
    # The run is complete and its checkpoint is in MLflow; a new run of this configuration
    # (DVC reruns only when a dependency changed) starts from scratch.
    shutil.rmtree(ckpt_path.parent)
    return metrics


class Preempted(EmoganError):
    """SIGTERM stopped training after writing a checkpoint; running the stage again resumes."""


class LossWindow:
    """The loss terms summed on the device since the last log step, so that the loop waits for
    the device only when it reads them. Under torchrun, what it reads is the average over the
    ranks (`mean`), so every rank logs, and checks for NaN, the same numbers."""

    def __init__(
        self,
        device: torch.device,
        state: Mapping | None = None,
        mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.mean = mean or (lambda tensor: tensor)
        self.first: int | None = None  # the first iteration summed
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # the G terms come every n_critic iterations only
        if state:
            self.first, self.counts = state["first"], dict(state["counts"])
            self.sums = {name: total.to(device) for name, total in state["sums"].items()}

    def add(self, iteration: int, losses: Mapping[str, torch.Tensor]) -> None:
        self.first = self.first or iteration
        for name, value in losses.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def read(self) -> tuple[int, dict[str, float]]:
        """The first iteration summed and each loss's average, in LOSS_NAMES order; then
        starts a new window."""
        names = [name for name in LOSS_NAMES if name in self.sums]
        totals = self.mean(torch.stack([self.sums[name] for name in names])).tolist()
        averages = {
            name: total / self.counts[name] for name, total in zip(names, totals, strict=True)
        }
        first = self.first or 0
        self.first, self.sums, self.counts = None, {}, {}
        return first, averages

    def pool(self) -> None:
        """Replace the sums by their average over the ranks (a no-op in one process): a
        checkpoint keeps one window for all ranks, which the next read() averages correctly."""
        names = [name for name in LOSS_NAMES if name in self.sums]
        if names:
            pooled = self.mean(torch.stack([self.sums[name] for name in names]))
            self.sums = dict(zip(names, pooled.unbind(), strict=True))

    def state(self) -> dict:
        return {
            "first": self.first,
            "sums": {name: total.cpu() for name, total in self.sums.items()},
            "counts": dict(self.counts),
        }


def resolved_config(params: Params) -> dict[str, object]:
    """Everything the networks and the training are built from, with layers resolved into
    g_layers and d_layers: out_dir/config.json, the MLflow params, the fingerprint."""
    return {
        "channels": params.merge.channels,
        "image_size": params.image_size,
        "c_dim": C_DIM,
        "g_conv_dim": params.model.g_conv_dim,
        "d_conv_dim": params.model.d_conv_dim,
        "g_layers": params.g_layers,
        "d_layers": params.d_layers,
        "d_init": params.model.d_init,
        **params.train.model_dump(),
    }


@contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """An event that SIGTERM sets while the block runs. The handler does nothing else: the
    loop stops at the end of an iteration, so a preempted machine leaves a checkpoint."""
    flag = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _weights(nets: Networks) -> dict[str, torch.Tensor]:
    named = [("G", nets.G.named_parameters()), ("D", nets.D.named_parameters())]
    return {f"{net}.{name}": p.detach() for net, parameters in named for name, p in parameters}


def _check_finite(
    values: Mapping[str, float | torch.Tensor],
    since: int,
    done: int,
    ckpt_path: Path,
    saved_at: int,
) -> None:
    """Stop, naming the first NaN or infinite value, before it reaches a log or a checkpoint."""
    finite = torch.stack([torch.as_tensor(v).isfinite().all() for v in values.values()]).tolist()
    bad = [name for name, ok in zip(values, finite, strict=True) if not ok]
    if bad:
        kept = (
            f"the last good checkpoint (iteration {saved_at}) is kept at {ckpt_path}"
            if saved_at
            else "no checkpoint was written"
        )
        raise EmoganError(
            f"train: {bad[0]} is NaN or infinite in iterations {since}-{done}; {kept}; "
            "lower train.g_lr / train.d_lr or check the data"
        )


def _write_loss_log(path: Path, losses: tuple[str, ...], rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ("iteration", *losses), restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def _append_loss_row(path: Path, losses: tuple[str, ...], row: dict[str, float]) -> None:
    with path.open("a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, ("iteration", *losses), restval="").writerow(row)


def _log_bytes(run: TrainingRun, name: str, data: bytes, artifact_path: str | None = None) -> None:
    """Log data as an MLflow artifact file called name."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / name
        path.write_bytes(data)
        run.log_artifact(path, artifact_path)
