"""A trained generator: the files of its folder (the train stage's out, models/stargan/),
writing and loading them, and running G on faces. The train stage writes the folder through
here; samples, evaluate, translate and the MLflow model read it through here."""

import json
import pickle
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


def save_trained(
    folder: Path, G: torch.nn.Module, D: torch.nn.Module, config: dict, run_info: dict
) -> None:
    """Write the folder's four files: both networks' weights, the config, the run."""
    torch.save(G.state_dict(), folder / GENERATOR_FILE)
    torch.save(D.state_dict(), folder / DISCRIMINATOR_FILE)
    for name, record in ((CONFIG_FILE, config), (RUN_FILE, run_info)):
        (folder / name).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def load_generator(model_dir: Path) -> tuple[Generator, dict]:
    """The trained G, on the CPU, and the resolved config it was trained with; a missing,
    unreadable or mismatched file is refused in one line that names it."""
    folder = Path(model_dir)
    config_path, weights_path = folder / CONFIG_FILE, folder / GENERATOR_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        G = Generator(config["channels"], config["c_dim"], config["g_conv_dim"], config["g_layers"])
        G.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    except FileNotFoundError as error:
        raise EmoganError(f"{error.filename}: not found (run the train stage first)") from None
    except OSError as error:
        raise EmoganError(f"{error.filename}: {error.strerror}") from None
    except KeyError as error:
        raise EmoganError(f"{config_path}: no {error.args[0]!r} value") from None
    except ValueError as error:  # json's error for a file that is not JSON
        raise EmoganError(f"{config_path}: not valid JSON ({error})") from None
    except (RuntimeError, pickle.UnpicklingError) as error:
        problem = torch_error_line(error)
        if str(error).startswith("Error(s) in loading state_dict"):
            raise EmoganError(f"{weights_path} does not fit {config_path}: {problem}") from None
        raise EmoganError(f"{weights_path}: unreadable ({problem})") from None
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


def torch_error_line(error: Exception) -> str:
    """A torch error's first specific sentence: load_state_dict puts the mismatch on its second
    line, and torch.load follows what went wrong with advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return lines[0].split(". ")[0] if lines else type(error).__name__
