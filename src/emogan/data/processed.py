"""data/processed, the merge stage's output, as the training stages read it: each split once
into one tensor, checked against the shape the networks are built for, and hashed."""

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emogan.data.merge import SOFT_LABEL_COLUMNS, SOFT_LABELS_FILE, SOURCES
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError


@dataclass
class Dataset:
    images: torch.Tensor  # N x C x H x W in [-1, 1], on the training device
    labels: torch.Tensor  # N, int64
    sources: torch.Tensor  # N, int64: where each face came from, an index into SOURCES
    # N x 7 float: each face's share per emotion (FER+ probability mode); None: the labels alone
    soft_labels: torch.Tensor | None = None

    def subset(self, index: torch.Tensor) -> "Dataset":
        soft = None if self.soft_labels is None else self.soft_labels[index]
        return Dataset(self.images[index], self.labels[index], self.sources[index], soft)


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
    images = from_pixels(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    labels = torch.tensor([int(row["label"]) for row in rows])
    sources = torch.tensor([_source_of(row, index) for row in rows])
    soft = _soft_labels(Path(data_dir) / SOFT_LABELS_FILE, [row["path"] for row in rows])
    return Dataset(
        images.to(device),
        labels.to(device),
        sources.to(device),
        None if soft is None else soft.to(device),
    )


def _soft_labels(path: Path, image_paths: list[str]) -> torch.Tensor | None:
    """The soft labels of image_paths from the merge stage's soft-label file, if it wrote one."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        if tuple(next(reader, ())) != SOFT_LABEL_COLUMNS:
            raise EmoganError(f"{path} line 1: not {','.join(SOFT_LABEL_COLUMNS)} (rerun merge)")
        shares = {row[0]: [float(share) for share in row[1:]] for row in reader}
    missing = [image for image in image_paths if image not in shares]
    if missing:
        raise EmoganError(f"{path}: no row for {missing[0]} (rerun the merge stage)")
    return torch.tensor([shares[image] for image in image_paths])


def _source_of(row: dict[str, str], index: Path) -> int:
    source = row.get("source")
    if source not in SOURCES:
        raise EmoganError(
            f"{index}: {row['path']}: source {source!r} is not one of {', '.join(SOURCES)} "
            "(rerun the merge stage)"
        )
    return SOURCES.index(source)


def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1], the range the networks take and G's tanh gives."""
    return pixels.float().div(127.5).sub(1.0)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> uint8 pixels; from_pixels undone."""
    return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def check_images(
    data: Dataset, channels: int, image_size: int, data_dir: Path, expected_by: str
) -> None:
    """Refuse images of another shape than the networks are built for (by `expected_by`)."""
    expected = "x".join(map(str, (channels, image_size, image_size)))
    found = "x".join(map(str, data.images.shape[1:]))
    if found != expected:
        raise EmoganError(
            f"{data_dir}: images are {found} (channels x height x width) but {expected_by} "
            f"expects {expected}; bring them up to date with `dvc repro`"
        )


def dataset_hash(data_dir: Path) -> str:
    """The hash DVC gives data_dir (`<md5>.dir`, as dvc.lock records it): the md5 of the JSON
    list of its files' md5 and relative paths. The MLflow runs carry it, so a run and a
    `dvc.lock` entry can be matched."""
    data_dir = Path(data_dir)
    files = sorted(
        (path.relative_to(data_dir).as_posix(), path)
        for path in data_dir.rglob("*")
        if path.is_file()
    )
    listing = [
        {"md5": hashlib.md5(path.read_bytes()).hexdigest(), "relpath": name} for name, path in files
    ]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def dataset_profile(data_dir: Path) -> dict[str, dict[str, int]]:
    """Images per split and emotion, from data_dir's index.csv: {"train": {"angry": n, ...}}."""
    counts: dict[str, dict[str, int]] = {}
    with (Path(data_dir) / "index.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            split = counts.setdefault(row["split"], dict.fromkeys(EMOTIONS, 0))
            split[row["emotion"]] += 1
    return counts
