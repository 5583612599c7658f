"""StarGAN training: the official losses and update order, one D update per iteration and a G
update every n_critic, with the data resident on the training device."""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emogan.config import Params, TrainConfig
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.stargan.model import Discriminator, Generator, check_architecture

C_DIM = len(EMOTIONS)


@dataclass
class Dataset:
    images: torch.Tensor  # N x C x H x W in [-1, 1], on the training device
    labels: torch.Tensor  # N, int64


@dataclass
class Networks:
    G: Generator
    D: Discriminator
    g_optimizer: torch.optim.Adam
    d_optimizer: torch.optim.Adam


def load_split(data_dir: Path, split: str, device: torch.device) -> Dataset:
    """Every image of one split of data/processed, read once into one tensor."""
    index = Path(data_dir) / "index.csv"
    try:
        with index.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    except FileNotFoundError:
        raise EmoganError(f"{index}: not found (run the merge stage first)") from None
    if not rows:
        raise EmoganError(f"{index}: no {split} images")
    pixels = np.stack([np.asarray(Image.open(Path(data_dir) / row["path"])) for row in rows])
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    labels = torch.tensor([int(row["label"]) for row in rows])
    return Dataset(images.to(device), labels.to(device))


def build_networks(params: Params, channels: int, device: torch.device) -> Networks:
    check_architecture(params.image_size, params.d_layers)
    G = Generator(channels, C_DIM, params.model.g_conv_dim, params.g_layers).to(device)
    D = Discriminator(
        channels, params.image_size, C_DIM, params.model.d_conv_dim, params.d_layers
    ).to(device)
    cfg = params.train
    betas = (cfg.beta1, cfg.beta2)
    return Networks(
        G,
        D,
        torch.optim.Adam(G.parameters(), cfg.g_lr, betas),
        torch.optim.Adam(D.parameters(), cfg.d_lr, betas),
    )


def sample_batch(
    data: Dataset, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch with random horizontal flips, drawn on the data's device."""
    device = data.images.device
    index = torch.randint(len(data.labels), (batch_size,), device=device, generator=generator)
    x = data.images[index]
    flip = torch.rand(batch_size, 1, 1, 1, device=device, generator=generator) < 0.5
    return torch.where(flip, x.flip(3), x), data.labels[index]


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
    """One D update, and a G update when iteration + 1 is a multiple of n_critic.

    Returns the detached loss terms as device tensors: reading them is the caller's choice, so
    the loop need not wait for the device every iteration.
    """
    G, D = nets.G, nets.D
    g_lr, d_lr = learning_rates(cfg, iteration)
    for group in nets.g_optimizer.param_groups:
        group["lr"] = g_lr
    for group in nets.d_optimizer.param_groups:
        group["lr"] = d_lr
    # Targets are the batch's own labels shuffled, as in the official code.
    perm = torch.randperm(label_org.size(0), device=label_org.device, generator=generator)
    label_trg = label_org[perm]
    c_org = F.one_hot(label_org, C_DIM).float()
    c_trg = F.one_hot(label_trg, C_DIM).float()

    out_src, out_cls = D(x_real)
    d_loss_real = -out_src.mean()
    d_loss_cls = F.cross_entropy(out_cls, label_org)
    x_fake = G(x_real, c_trg).detach()
    d_loss_fake = D(x_fake)[0].mean()
    alpha = torch.rand(x_real.size(0), 1, 1, 1, device=x_real.device, generator=generator)
    x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
    d_loss_gp = gradient_penalty(D(x_hat)[0], x_hat)
    d_loss = d_loss_real + d_loss_fake + cfg.lambda_cls * d_loss_cls + cfg.lambda_gp * d_loss_gp
    nets.d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    nets.d_optimizer.step()
    losses = {"D/loss_real": d_loss_real, "D/loss_fake": d_loss_fake,
              "D/loss_cls": d_loss_cls, "D/loss_gp": d_loss_gp}  # fmt: skip

    if (iteration + 1) % cfg.n_critic == 0:
        x_fake = G(x_real, c_trg)
        out_src, out_cls = D(x_fake)
        g_loss_fake = -out_src.mean()
        g_loss_cls = F.cross_entropy(out_cls, label_trg)
        g_loss_rec = (x_real - G(x_fake, c_org)).abs().mean()
        g_loss = g_loss_fake + cfg.lambda_rec * g_loss_rec + cfg.lambda_cls * g_loss_cls
        nets.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        nets.g_optimizer.step()
        losses |= {"G/loss_fake": g_loss_fake, "G/loss_rec": g_loss_rec, "G/loss_cls": g_loss_cls}
    return {name: value.detach() for name, value in losses.items()}
