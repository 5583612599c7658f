"""The official StarGAN networks (yunjey/stargan model.py), for any channel count and size.

One difference, on purpose: InstanceNorm does not track running statistics. The official code
tracks them but never puts G in eval mode, so every translation it made used per-image
statistics; switching to the running averages (G.eval()) gives different, worse images early
in training. Without the buffers, eval() and train() are the same network, so samples,
evaluation and `translate` cannot disagree. The parameter counts are unchanged.
"""

import torch
from torch import nn

from emogan.errors import EmoganError


def instance_norm(dim: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(dim, affine=True, track_running_stats=False)


class ResidualBlock(nn.Module):
    """Residual block with instance normalization."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            instance_norm(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=False),
            instance_norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class Generator(nn.Module):
    """Encoder, residual blocks, decoder; the target domain enters as constant label maps."""

    def __init__(self, channels: int, c_dim: int, conv_dim: int, repeat_num: int) -> None:
        super().__init__()
        layers = [
            nn.Conv2d(channels + c_dim, conv_dim, kernel_size=7, stride=1, padding=3, bias=False),
            instance_norm(conv_dim),
            nn.ReLU(inplace=True),
        ]
        curr_dim = conv_dim
        for _ in range(2):  # down-sampling
            layers += [
                nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1, bias=False),
                instance_norm(curr_dim * 2),
                nn.ReLU(inplace=True),
            ]
            curr_dim *= 2
        layers += [ResidualBlock(curr_dim) for _ in range(repeat_num)]
        for _ in range(2):  # up-sampling
            layers += [
                nn.ConvTranspose2d(
                    curr_dim, curr_dim // 2, kernel_size=4, stride=2, padding=1, bias=False
                ),
                instance_norm(curr_dim // 2),
                nn.ReLU(inplace=True),
            ]
            curr_dim //= 2
        layers += [
            nn.Conv2d(curr_dim, channels, kernel_size=7, stride=1, padding=3, bias=False),
            nn.Tanh(),
        ]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # Replicate the one-hot domain vector spatially and stack it onto the image's channels.
        c = c.view(c.size(0), c.size(1), 1, 1).expand(-1, -1, x.size(2), x.size(3))
        return self.main(torch.cat([x, c], dim=1))


class Discriminator(nn.Module):
    """PatchGAN: a real/fake map from one head and the domain logits from another."""

    def __init__(
        self, channels: int, image_size: int, c_dim: int, conv_dim: int, repeat_num: int
    ) -> None:
        super().__init__()
        layers = [nn.Conv2d(channels, conv_dim, kernel_size=4, stride=2, padding=1),
                  nn.LeakyReLU(0.01)]  # fmt: skip
        curr_dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(curr_dim, curr_dim * 2, kernel_size=4, stride=2, padding=1),
                       nn.LeakyReLU(0.01)]  # fmt: skip
            curr_dim *= 2
        kernel_size = image_size // 2**repeat_num
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(curr_dim, 1, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(curr_dim, c_dim, kernel_size=kernel_size, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        out_src = self.conv1(h)
        out_cls = self.conv2(h)
        return out_src, out_cls.view(out_cls.size(0), out_cls.size(1))


def start_at_unit_gradient(D: Discriminator, faces: torch.Tensor) -> None:
    """Zero D's biases and scale the weights on its real/fake path alike, so that the mean
    norm of dD(x)/dx over these real faces is 1, the value the gradient penalty asks for.

    With PyTorch's default initialisation each strided layer shrinks that gradient about 7x
    (0.0006 at 5 layers on 32 px faces). D's first updates, each of Adam's fixed size, must then
    grow it by orders of magnitude, and on the way they push most of D's units onto LeakyReLU's
    0.01 slope (with or without the penalty): D's features stop depending on the face and its
    emotion classifier never leaves chance (BENCHMARKS.md, "Every layers value learns")."""
    for conv in (m for m in D.modules() if isinstance(m, nn.Conv2d)):
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    faces = faces.detach().clone().requires_grad_(True)
    out_src, _ = D(faces)
    (grad,) = torch.autograd.grad(out_src.sum(), faces)
    norm = grad.flatten(1).norm(dim=1).mean().item()
    # Without biases D's output is positively homogeneous in each layer's weights: scaling the
    # n layers on the path by s scales the gradient by s**n.
    path = [m for m in D.main if isinstance(m, nn.Conv2d)] + [D.conv1]
    scale = norm ** (-1 / len(path))
    with torch.no_grad():
        for conv in path:
            conv.weight.mul_(scale)


def check_architecture(image_size: int, d_layers: int) -> None:
    """Refuse, before any work, settings the networks cannot run with, naming the key."""
    if image_size % 4:
        raise EmoganError(
            f"image_size: {image_size} is not a multiple of 4 (G halves it twice, then doubles "
            f"it twice); use {image_size // 4 * 4} or {image_size // 4 * 4 + 4}"
        )
    largest = image_size.bit_length() - 1  # the most halvings that leave D's head a kernel >= 1
    if d_layers > largest:
        raise EmoganError(
            f"model.d_layers: {d_layers} strided layers leave a {image_size}/2**{d_layers} < 1 "
            f"pixel map at image_size {image_size}; the largest valid value is {largest}"
        )
