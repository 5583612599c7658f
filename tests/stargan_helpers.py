"""A tiny data/processed and tiny StarGAN params, so a real training takes a second or two."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from emogan.config import Params, load_params
from emogan.emotions import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def write_dataset(data_dir: Path, train_per_emotion: int = 3, test_per_emotion: int = 2) -> Path:
    """SIZE x SIZE gray faces, one brightness pattern per emotion plus noise, and index.csv;
    every second face of an emotion is a custom crop, the others FER2013's."""
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", train_per_emotion), ("test", test_per_emotion)):
        for label, emotion in enumerate(EMOTIONS):
            for n in range(count):
                path = f"{split}/{emotion}/{n}.png"
                pattern = np.full((SIZE, SIZE), 30.0 * label)
                pattern[label : label + 4] = 255
                pixels = np.clip(pattern + rng.normal(0, 20, pattern.shape), 0, 255)
                (data_dir / path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(data_dir / path)
                source = ("fer2013", "custom")[n % 2]
                rows.append({"path": path, "label": label, "emotion": emotion,
                             "source": source, "split": split})  # fmt: skip
    with (data_dir / "index.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ("path", "label", "emotion", "source", "split"))
        writer.writeheader()
        writer.writerows(rows)
    return data_dir


def tiny_params(tracking_uri: str, layers: int = 1, **train: object) -> Params:
    """The project's params.yaml with SIZE px images, 4-filter networks and 8 iterations."""
    params = load_params(ROOT / "params.yaml")
    train = {"num_iters": 8, "num_iters_decay": 4, "batch_size": 4, "n_critic": 2, "log_step": 3,
             "sample_step": 4, "checkpoint_step": 3, "device": "cpu", **train}  # fmt: skip
    return params.model_copy(
        update={
            "layers": layers,
            "image_size": SIZE,
            "model": params.model.model_copy(update={"g_conv_dim": 4, "d_conv_dim": 4}),
            "train": params.train.model_copy(update=train),
            "mlflow": params.mlflow.model_copy(update={"tracking_uri": tracking_uri}),
        }
    )
