"""FER2013 in either published layout, validated and read into arrays.

- The Kaggle CSV `emotion,pixels,Usage` (column order free, names stripped of spaces as in
  `icml_face_data.csv`): every row must hold a label 0-6, exactly 48x48 space-separated pixel
  values 0-255 and a known Usage. Kaggle's challenge `train.csv` has no Usage column; its rows
  are all Training rows, so a CSV without one is read as all Training (with a warning).
- Image folders `train/<emotion>/*` and `test/<emotion>/*` (names case-insensitive), any image
  size; colour images are converted to gray. train_usage/test_usage do not apply here: the
  folder a file is in is its split.
"""

import logging
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from emogan.config import Fer2013Config
from emogan.data.images import read_rgb
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.errors import EmoganError

log = logging.getLogger(__name__)

FER_SIZE = 48
PIXELS = FER_SIZE * FER_SIZE
USAGES = ("Training", "PublicTest", "PrivateTest")
# The real FER2013's rows per label (angry .. neutral) in each Usage: the demo world and the
# merge benchmark copy its imbalance (547 disgust in 35,887).
FER2013_COUNTS = {
    "Training": (3995, 436, 4097, 7215, 4830, 3171, 4965),
    "PublicTest": (467, 56, 496, 895, 653, 415, 607),
    "PrivateTest": (491, 55, 528, 879, 594, 416, 626),
}
LABEL_TEXTS = tuple(str(label) for label in range(len(EMOTIONS)))
CHUNK_ROWS = 2048  # ~17 MB of CSV text per chunk: big enough to vectorise, small in memory
FOLDER_SPLITS = ("train", "test")
READ_THREADS = 8  # Pillow and cv2 decode without the GIL
_PIXEL_TOKEN = re.compile(r"[0-9]{1,3}")


@dataclass(frozen=True)
class FerImages:
    """The FER2013 rows that belong to a split, in file order."""

    images: Sequence[np.ndarray]  # one H x W uint8 gray image per row (48 x 48 from the CSV)
    labels: np.ndarray  # int64, FER2013's label order
    splits: tuple[str, ...]  # "train" or "test"
    names: tuple[str, ...]  # file stem for the row: fer-<CSV line number or file number>
    origins: tuple[str, ...]  # where the row came from: fer2013:line:17, fer2013:train/x/y.png
    skipped: int  # rows whose Usage is in neither train_usage nor test_usage
    # 0-based position of each row among the CSV's data rows (FER+ votes join by it); None for
    # folders, which have no row order
    rows: np.ndarray | None


def read_fer2013(cfg: Fer2013Config) -> FerImages:
    """Read and validate cfg.path (a CSV or a folder); raise EmoganError at the first bad row."""
    path = Path(cfg.path)
    if path.is_dir():
        return _read_folders(path)
    if not path.is_file():
        raise EmoganError(
            f"{path}: not found (set fer2013.path to the Kaggle CSV or a train/ test/ folder)"
        )
    split_of_usage = {usage: "train" for usage in cfg.train_usage} | {
        usage: "test" for usage in cfg.test_usage
    }
    return _read_csv(path, split_of_usage)


# --- Kaggle CSV --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CsvRows:
    pixels: np.ndarray  # N x 48 x 48 uint8
    labels: np.ndarray
    usages: np.ndarray  # str
    lines: np.ndarray  # 1-based line numbers in the file (the header is line 1)


def _read_csv(path: Path, split_of_usage: dict[str, str]) -> FerImages:
    rows = _parse_csv(path)
    splits = np.array([split_of_usage.get(usage, "") for usage in rows.usages])
    kept = np.flatnonzero(splits != "")
    return FerImages(
        images=rows.pixels[kept],
        labels=rows.labels[kept],
        splits=tuple(splits[kept].tolist()),
        names=tuple(f"fer-{line:06d}" for line in rows.lines[kept].tolist()),
        origins=tuple(f"fer2013:line:{line}" for line in rows.lines[kept].tolist()),
        skipped=len(splits) - len(kept),
        rows=kept,
    )


def _parse_csv(path: Path) -> _CsvRows:
    if "Usage" not in _csv_columns(path):
        log.warning("%s: no Usage column; every row is read as a Training row", path)
    parts: list[_CsvRows] = []
    first_line = 2
    with tqdm(desc="read fer2013", unit="row", disable=None) as progress:
        for chunk in _csv_chunks(path):
            chunk.columns = chunk.columns.str.strip()
            parts.append(_parse_chunk(chunk.fillna(""), first_line, path))
            first_line += len(chunk)
            progress.update(len(chunk))
    if not any(len(part.lines) for part in parts):
        raise EmoganError(f"{path}: no data rows")
    return _CsvRows(
        pixels=np.concatenate([part.pixels for part in parts]),
        labels=np.concatenate([part.labels for part in parts]),
        usages=np.concatenate([part.usages for part in parts]),
        lines=np.concatenate([part.lines for part in parts]),
    )


def _csv_columns(path: Path) -> list[str]:
    try:
        columns = [name.strip() for name in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError:
        raise EmoganError(f"{path}: empty file (need a header emotion,pixels,Usage)") from None
    except UnicodeDecodeError:
        raise EmoganError(f"{path}: not a text CSV file") from None
    for needed in ("emotion", "pixels"):
        if needed not in columns:
            raise EmoganError(f"{path} line 1: no {needed!r} column (need emotion,pixels,Usage)")
    return columns


def _csv_chunks(path: Path):
    """DataFrames of CHUNK_ROWS rows, all values str. Blank lines are kept as rows of empty
    values so that row positions stay line numbers; _parse_chunk drops them."""
    reader = pd.read_csv(
        path,
        dtype=str,
        keep_default_na=False,
        skip_blank_lines=False,
        chunksize=CHUNK_ROWS,
    )
    try:
        yield from reader
    except pd.errors.ParserError as error:
        raise EmoganError(_parser_message(path, error)) from None
    except UnicodeDecodeError:
        raise EmoganError(f"{path}: not a text CSV file") from None


def _parser_message(path: Path, error: pd.errors.ParserError) -> str:
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
    if found is None:
        return f"{path}: not a valid CSV ({str(error).strip()})"
    expected, line, saw = found.groups()
    return f"{path} line {line}: {saw} fields (need {expected}, as in the header)"


def _parse_chunk(chunk: pd.DataFrame, first_line: int, path: Path) -> _CsvRows:
    lines = np.arange(first_line, first_line + len(chunk))
    filled = (chunk != "").any(axis=1).to_numpy()  # blank lines are skipped, not errors
    chunk, lines = chunk[filled], lines[filled]
    labels = chunk["emotion"].str.strip()
    if "Usage" in chunk:
        usages = chunk["Usage"].str.strip()
    else:
        usages = pd.Series("Training", index=chunk.index)
    pixel_texts = chunk["pixels"].tolist()
    pixels = None
    if labels.isin(LABEL_TEXTS).all() and usages.isin(USAGES).all():
        pixels = _parse_pixel_block(pixel_texts)
    if pixels is None:  # something is wrong in this chunk: find the first bad row and name it
        pixels = np.array(
            [
                _parse_row(label, text, usage, f"{path} line {line}")
                for label, text, usage, line in zip(
                    labels, pixel_texts, usages, lines.tolist(), strict=True
                )
            ],
            np.uint8,
        )
    return _CsvRows(
        pixels=pixels.reshape(-1, FER_SIZE, FER_SIZE),
        labels=labels.to_numpy(np.int64),
        usages=usages.to_numpy(str),
        lines=lines,
    )


def _parse_pixel_block(texts: list[str]) -> np.ndarray | None:
    """All rows' pixels in one numpy parse, or None if any row is malformed.

    A -1 between rows marks where each row ends: with the right total count and no negative
    value in any pixel slot, every -1 is in a row-end slot, so every row has exactly 2304
    values (a row one value short next to a row one value long cannot pass).
    """
    with warnings.catch_warnings():
        # numpy warns (and may one day raise) when text stops parsing part way.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            values = np.fromstring(" -1 ".join(texts) + " -1", dtype=np.int64, sep=" ")
        except ValueError:
            return None
    if values.size != len(texts) * (PIXELS + 1):
        return None
    rows = values.reshape(len(texts), PIXELS + 1)
    pixels = rows[:, :PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        return None
    return pixels.astype(np.uint8)


def _parse_row(label: str, text: str, usage: str, where: str) -> np.ndarray:
    """One row's pixels; raise EmoganError naming the row and what is wrong with it."""
    if label not in LABEL_TEXTS:
        raise EmoganError(f"{where}: emotion {label!r} is not a label 0-{len(EMOTIONS) - 1}")
    tokens = text.split()
    if len(tokens) != PIXELS:
        raise EmoganError(
            f"{where}: {len(tokens)} pixel values (need {PIXELS} = {FER_SIZE}x{FER_SIZE})"
        )
    for position, token in enumerate(tokens, start=1):
        if not (_PIXEL_TOKEN.fullmatch(token) and int(token) <= 255):
            raise EmoganError(f"{where}: pixel {position} is {token!r} (need an integer 0-255)")
    if usage not in USAGES:
        raise EmoganError(f"{where}: Usage {usage!r} is not one of {', '.join(USAGES)}")
    return np.array(tokens, dtype=np.uint8)


# --- image folders -----------------------------------------------------------------------------


def _read_folders(root: Path) -> FerImages:
    files = _list_images(root)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        images = list(
            tqdm(
                pool.map(_read_gray, [root / relative for _, _, relative in files]),
                total=len(files),
                desc="read fer2013",
                unit="image",
                disable=None,
            )
        )
    return FerImages(
        images=images,
        labels=np.array([label for _, label, _ in files], np.int64),
        splits=tuple(split for split, _, _ in files),
        names=tuple(f"fer-{number:06d}" for number in range(1, len(files) + 1)),
        origins=tuple(f"fer2013:{relative.as_posix()}" for _, _, relative in files),
        skipped=0,
        rows=None,
    )


def _list_images(root: Path) -> list[tuple[str, int, Path]]:
    """(split, label, path relative to root) of every image, in sorted path order."""
    files = []
    for split_dir in _visible(root):
        split = split_dir.name.lower()
        if split not in FOLDER_SPLITS or not split_dir.is_dir():
            raise EmoganError(f"{split_dir}: not a train or test folder")
        for emotion_dir in _visible(split_dir):
            emotion = emotion_dir.name.lower()
            if emotion not in LABEL_OF or not emotion_dir.is_dir():
                raise EmoganError(
                    f"{emotion_dir}: not an emotion folder (need one of {', '.join(EMOTIONS)})"
                )
            files += [
                (split, LABEL_OF[emotion], f.relative_to(root)) for f in _visible(emotion_dir)
            ]
    if not files:
        raise EmoganError(f"{root}: no images in train/<emotion>/ or test/<emotion>/")
    return files


def _visible(folder: Path) -> list[Path]:
    """Entries in name order, without hidden ones (.DS_Store, editor files)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _read_gray(path: Path) -> np.ndarray:
    return cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2GRAY)
