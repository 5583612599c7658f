"""The StarGAN networks: the official parameter counts, refused settings, one learning step."""

from pathlib import Path

import pytest
import torch

from emogan.config import load_params
from emogan.data.processed import Dataset
from emogan.errors import EmoganError
from emogan.stargan.model import (
    Discriminator,
    Generator,
    check_architecture,
    start_at_unit_gradient,
)
from emogan.stargan.train import build_networks, sample_batch, train_iteration

ROOT = Path(__file__).resolve().parents[1]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("layers", "g_params", "d_params"),
    [(3, 1_234_976, 199_008), (4, 1_530_400, 708_576), (5, 1_825_824, 2_796_000)],
)
def test_parameter_counts_equal_the_official_code_at_48px(
    layers: int, g_params: int, d_params: int
) -> None:
    assert _count(Generator(3, 7, 32, layers)) == g_params
    assert _count(Discriminator(3, 48, 7, 32, layers)) == d_params


def test_the_official_default_config_has_the_official_counts() -> None:
    assert _count(Generator(3, 5, 64, 6)) == 8_430_528
    assert _count(Discriminator(3, 128, 5, 64, 6)) == 44_762_048


@pytest.mark.parametrize("layers", [1, 3, 5])
def test_shapes_for_grayscale_48px(layers: int) -> None:
    x = torch.randn(2, 1, 48, 48)
    c = torch.eye(7)[[0, 3]]
    assert Generator(1, 7, 8, layers)(x, c).shape == x.shape
    out_src, out_cls = Discriminator(1, 48, 7, 8, layers)(x)
    assert out_cls.shape == (2, 7) and out_src.shape == (2, 1, 48 >> layers, 48 >> layers)


def test_eval_and_train_mode_translate_alike() -> None:
    G = Generator(1, 7, 8, 2)
    x, c = torch.randn(3, 1, 48, 48), torch.eye(7)[[1, 2, 3]]
    train_out = G.train()(x, c)
    assert torch.equal(G.eval()(x, c), train_out)


@pytest.mark.parametrize(
    ("image_size", "d_layers", "message"),
    [
        (48, 6, "model.d_layers: 6 strided layers leave a 48/2**6 < 1 pixel map at image_size 48;"
                " the largest valid value is 5"),
        (128, 8, "model.d_layers: 8 strided layers leave a 128/2**8 < 1 pixel map at image_size"
                 " 128; the largest valid value is 7"),
        (50, 3, "image_size: 50 is not a multiple of 4"),
    ],
)  # fmt: skip
def test_impossible_settings_are_refused_naming_the_key(
    image_size: int, d_layers: int, message: str
) -> None:
    with pytest.raises(EmoganError) as caught:
        check_architecture(image_size, d_layers)
    assert str(caught.value).startswith(message)


def test_the_thesis_crash_is_refused_before_any_network_is_built() -> None:
    params = load_params(ROOT / "params.yaml").model_copy(update={"layers": 6})
    with pytest.raises(EmoganError, match="model.d_layers: 6 .* largest valid value is 5"):
        build_networks(params, _random_faces(4, params.image_size))


def test_one_iteration_moves_both_networks() -> None:
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(
        update={"layers": 2, "train": params.train.model_copy(update={"n_critic": 1})}
    )
    data = _random_faces(20, params.image_size)
    torch.manual_seed(0)
    nets = build_networks(params, data)
    before = [p.detach().clone() for p in (*nets.G.parameters(), *nets.D.parameters())]
    generator = torch.Generator().manual_seed(0)
    x, labels = sample_batch(data, 4, generator)
    losses = train_iteration(nets, x, labels, params.train, 0, generator)
    assert set(losses) == {"D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_gp",
                           "G/loss_fake", "G/loss_rec", "G/loss_cls", "G/loss_id"}  # fmt: skip
    after = [*nets.G.parameters(), *nets.D.parameters()]
    n_g = len(list(nets.G.parameters()))
    assert all(not torch.equal(b, a) for b, a in zip(before[:n_g], after[:n_g], strict=True))
    assert all(not torch.equal(b, a) for b, a in zip(before[n_g:], after[n_g:], strict=True))


def _input_gradient_norm(D: Discriminator, faces: torch.Tensor) -> float:
    faces = faces.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(faces)[0].sum(), faces)
    return grad.flatten(1).norm(dim=1).mean().item()


@pytest.mark.parametrize("layers", [3, 5])
def test_d_starts_at_the_gradient_the_penalty_asks_for(layers: int) -> None:
    torch.manual_seed(0)
    D = Discriminator(1, 32, 7, 16, layers)
    calibration, other = _random_faces(64, 32).images, _random_faces(64, 32).images
    default = _input_gradient_norm(D, other)
    start_at_unit_gradient(D, calibration)
    assert _input_gradient_norm(D, calibration) == pytest.approx(1.0, abs=1e-4)
    assert _input_gradient_norm(D, other) == pytest.approx(1.0, abs=0.05)
    assert default < 0.2  # PyTorch's own initialisation starts far below it
    assert all(not conv.bias.any() for conv in D.main if isinstance(conv, torch.nn.Conv2d))


def test_d_init_pytorch_keeps_the_official_initialisation() -> None:
    params = load_params(ROOT / "params.yaml")
    data = _random_faces(8, params.image_size)
    built = {}
    for d_init in ("unit_gradient", "pytorch"):
        update = {"model": params.model.model_copy(update={"d_init": d_init})}
        torch.manual_seed(0)
        built[d_init] = build_networks(params.model_copy(update=update), data).D
    torch.manual_seed(0)
    Generator(1, 7, params.model.g_conv_dim, params.g_layers)  # built first, as build_networks does
    official = Discriminator(1, params.image_size, 7, params.model.d_conv_dim, params.d_layers)
    pairs = zip(built["pytorch"].state_dict().values(), official.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert _input_gradient_norm(built["unit_gradient"], data.images) == pytest.approx(1.0, abs=1e-4)


def _random_faces(count: int, size: int) -> Dataset:
    return Dataset(
        torch.rand(count, 1, size, size) * 2 - 1,
        torch.arange(count) % 7,
        torch.zeros(count, dtype=torch.long),
    )
