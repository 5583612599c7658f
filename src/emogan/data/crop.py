"""The crop stage: every face MTCNN finds in every collected photo, as a square crop framed by
emogan.data.framing (aligned on its landmarks, or the square around its box), listed in
crops.csv; and `read_crops`, through which the later stages read that file as `CropRecord`s."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from emogan import atomic
from emogan.config import CropConfig
from emogan.data.images import read_rgb
from emogan.data.landmarks import LANDMARKS, landmark_columns
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.progress import progress_bar, stage_timing

if TYPE_CHECKING:
    from emogan.data.detect import DetectedFace
    from emogan.data.framing import FaceFrame

# crop_a .. crop_ty: the FaceFrame from photo to crop pixels, so a crop traces back to its photo.
COLUMNS = (
    "crop_id", "path", "source_sha256", "source_path", "emotion", "prob",
    "x1", "y1", "x2", "y2", "crop_side", "crop_a", "crop_b", "crop_tx", "crop_ty",
    *landmark_columns(),
)  # fmt: skip


@dataclass(frozen=True)
class CropRecord:
    """A crops.csv row as review, simulated review and the review tool read it. The frame
    columns (crop_side .. crop_ty) are not in it: no later stage reads them."""

    crop_id: str
    path: str  # relative to the crops folder
    source_sha256: str
    source_path: str  # relative to the raw folder
    emotion: str  # the photo's keyword folder
    prob: float
    box: tuple[float, float, float, float]  # the face in the source photo: x1, y1, x2, y2
    landmarks: tuple[tuple[float, float], ...]  # MTCNN's five, in LANDMARKS order, in the photo


def read_crops(crops_dir: Path) -> list[CropRecord]:
    """The crop stage's crops.csv, in its order; a malformed row fails naming its line."""
    path = Path(crops_dir) / "crops.csv"
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = [column for column in COLUMNS if column not in header]
            if missing:
                raise EmoganError(f"{path} line 1: missing column {missing[0]!r}")
            crops = []
            for fields in reader:
                if not fields:  # a blank line, as a hand edit leaves at the end, is no row
                    continue
                where = f"{path} line {reader.line_num}"
                if len(fields) != len(header):
                    raise EmoganError(
                        f"{where}: {len(fields)} fields, the header has {len(header)}"
                    )
                crops.append(_parse_crop(dict(zip(header, fields, strict=True)), where))
            return crops
    except FileNotFoundError:
        raise EmoganError(f"{path}: not found (run the crop stage first)") from None


def _parse_crop(row: dict[str, str], where: str) -> CropRecord:
    def number(column: str) -> float:
        try:
            return float(row[column])
        except ValueError:
            raise EmoganError(f"{where}: {column} {row[column]!r} is not a number") from None

    if row["emotion"] not in EMOTIONS:
        raise EmoganError(
            f"{where}: emotion {row['emotion']!r} is not one of {', '.join(EMOTIONS)}"
        )
    return CropRecord(
        row["crop_id"],
        row["path"],
        row["source_sha256"],
        row["source_path"],
        row["emotion"],
        number("prob"),
        (number("x1"), number("y1"), number("x2"), number("y2")),
        tuple((number(f"{name}_x"), number(f"{name}_y")) for name in LANDMARKS),
    )


@dataclass(frozen=True)
class Photo:
    sha256: str
    path: Path  # relative to the raw folder
    emotion: str
    width: int
    height: int


@dataclass(frozen=True)
class Crop:
    """A kept face while the stage cuts it out; crops.csv is written from these."""

    crop_id: str
    photo: Photo
    face: DetectedFace
    frame: FaceFrame


def crop_id(sha256: str, rank: int) -> str:
    """Stable across re-runs and threshold changes: rank counts every detection, left to right."""
    return f"{sha256[:16]}-{rank:02d}"


def rank_faces(faces: list[DetectedFace]) -> list[DetectedFace]:
    """A photo's detections left to right (then top to bottom): the rank is part of crop_id."""
    return sorted(faces, key=lambda face: (face.x1, face.y1))


def rejection(face: DetectedFace, cfg: CropConfig) -> str | None:
    """Why a detection is not kept as a face (its metrics counter), or None when it is."""
    if face.prob < cfg.min_prob:
        return "rejected_low_prob"
    if min(face.x2 - face.x1, face.y2 - face.y1) < cfg.min_size:
        return "rejected_too_small"
    return None


def crop_faces(
    cfg: CropConfig,
    raw_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    """Detect, filter and crop every face of data/raw; write crops + crops.csv + metrics."""
    started = time.perf_counter()
    # Imported here, not at the top: the review tools import this module for read_crops, and
    # these load torch and MTCNN, seconds that the review server would wait at every start.
    from emogan.data.detect import detect_faces, load_detector
    from emogan.data.framing import cut_out, frame_faces
    from emogan.device import resolve_device

    photos = _read_raw_manifest(Path(raw_dir) / "manifest.csv")
    detector = load_detector(
        str(resolve_device(cfg.device, "crop.device")), min_face_size=min(cfg.min_size, 20)
    )
    counts: Counter[str] = Counter()
    crops: list[Crop] = []
    with (
        atomic.atomic_path(Path(out_dir)) as work,
        progress_bar(len(photos), "crop", "photo") as bar,
    ):
        (work / "images").mkdir(parents=True)
        for group in _batches(photos, cfg.batch_size):
            pixels = [_read(Path(raw_dir) / photo.path, cfg.min_size, counts) for photo in group]
            readable = [(p, rgb) for p, rgb in zip(group, pixels, strict=True) if rgb is not None]
            found = detect_faces(detector, [rgb for _, rgb in readable], cfg.batch_size)
            for (photo, rgb), faces in zip(readable, found, strict=True):
                kept = _keep(photo, faces, cfg, counts)
                frames = frame_faces(detector, rgb, [face for _, face in kept], cfg)
                for (crop_key, face), frame in zip(kept, frames, strict=True):
                    crop = Crop(crop_key, photo, face, frame)
                    Image.fromarray(cut_out(rgb, frame)).save(work / "images" / f"{crop_key}.png")
                    crops.append(crop)
            bar.update(len(group))
        _write_csv(work / "crops.csv", crops)
    metrics = _metrics(photos, crops, counts) | stage_timing(started)
    atomic.write_json(Path(metrics_path), metrics)
    return metrics


def _read_raw_manifest(path: Path) -> list[Photo]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise EmoganError(f"{path}: not found (run the collect stage first)") from None
    return [
        Photo(
            row["sha256"], Path(row["path"]), row["emotion"], int(row["width"]), int(row["height"])
        )
        for row in rows
        if row["status"] == "ok"
    ]


def _batches(photos: list[Photo], batch_size: int) -> list[list[Photo]]:
    """Photos of one size together (MTCNN batches only equal shapes), in a stable order."""
    by_size: dict[tuple[int, int], list[Photo]] = {}
    for photo in sorted(photos, key=lambda p: (p.width, p.height, p.sha256)):
        by_size.setdefault((photo.width, photo.height), []).append(photo)
    return [
        same[start : start + batch_size]
        for same in by_size.values()
        for start in range(0, len(same), batch_size)
    ]


def _read(path: Path, min_size: int, counts: Counter[str]) -> np.ndarray | None:
    """The photo's pixels, or None (counted) when it is unreadable or too small for a face."""
    try:
        rgb = read_rgb(path)
    except EmoganError as error:
        tqdm.write(f"crop: skipped {error}", file=sys.stderr)  # stdout is the stage's report
        counts["unreadable_images"] += 1
        return None
    if min(rgb.shape[:2]) < min_size:
        counts["images_too_small"] += 1
        return None
    return rgb


def _keep(
    photo: Photo, faces: list[DetectedFace], cfg: CropConfig, counts: Counter[str]
) -> list[tuple[str, DetectedFace]]:
    """The photo's faces kept as crops, with their crop ids; the rest counted by reason."""
    kept = []
    for rank, face in enumerate(rank_faces(faces)):
        reason = rejection(face, cfg)
        if reason:
            counts[reason] += 1
        else:
            kept.append((crop_id(photo.sha256, rank), face))
    if not faces:
        counts["images_without_faces"] += 1
    return kept


def _write_csv(path: Path, crops: list[Crop]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for crop in sorted(crops, key=lambda c: c.crop_id):
        face, frame = crop.face, crop.frame
        writer.writerow([
            crop.crop_id, f"images/{crop.crop_id}.png", crop.photo.sha256, crop.photo.path,
            crop.photo.emotion, round(face.prob, 5),
            *(round(v, 1) for v in face.box), frame.side,
            *(round(v, 6) for v in (frame.a, frame.b, frame.tx, frame.ty)),
            *(round(float(v), 1) for v in face.landmarks.reshape(-1)),
        ])  # fmt: skip
    path.write_text(buffer.getvalue(), encoding="utf-8")


REJECTIONS = (
    "images_without_faces",
    "images_too_small",
    "unreadable_images",
    "rejected_low_prob",
    "rejected_too_small",
)


def _metrics(photos: list[Photo], crops: list[Crop], counts: Counter[str]) -> dict:
    per_emotion = Counter(crop.photo.emotion for crop in crops)
    return {
        "images": len(photos),
        "faces": len(crops),
        "faces_per_image": round(len(crops) / max(len(photos), 1), 3),
        "faces_per_emotion": dict(sorted(per_emotion.items())),
        **{reason: counts[reason] for reason in REJECTIONS},
    }
