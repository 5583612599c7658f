"""A trained generator: the files of its folder (the train stage's out, models/stargan/),
loading G from them, and running G on faces. The samples, evaluate and translate stages and the
MLflow model all read a generator through here."""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emogan.data.processed import to_pixels
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.stargan.model import Generator

GENERATOR_FILE = "generator.pt"
DISCRIMINATOR_FILE = "discriminator.pt"
CONFIG_FILE = "config.json"  # the resolved training config: channels, image_size, layers, ...
RUN_FILE = "run.json"  # the MLflow run, its tracking URI and the config's fingerprint


def load_generator(model_dir: Path) -> tuple[Generator, dict]:
    """The trained G, on the CPU, and the resolved config it was trained with."""
    config_path = Path(model_dir) / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmoganError(f"{config_path}: not found (run the train stage first)") from None
    G = Generator(config["channels"], config["c_dim"], config["g_conv_dim"], config["g_layers"])
    weights = torch.load(Path(model_dir) / GENERATOR_FILE, map_location="cpu", weights_only=True)
    G.load_state_dict(weights)
    return G, config


def training_run_id(model_dir: Path) -> str | None:
    """The id of the MLflow run that trained it; None when tracking failed."""
    return json.loads((Path(model_dir) / RUN_FILE).read_text(encoding="utf-8"))["mlflow_run_id"]


@torch.no_grad()
def translate_faces(G: Generator, faces: torch.Tensor, target: int) -> np.ndarray:
    """N x H x W x C uint8: every face (N x C x H x W in [-1, 1]) translated into one emotion."""
    labels = torch.full((faces.size(0),), target, device=faces.device)
    fakes = G(faces, F.one_hot(labels, len(EMOTIONS)).float())
    return to_pixels(fakes).permute(0, 2, 3, 1).cpu().numpy()
