"""The crop stage: every face MTCNN finds in every collected photo, as a square crop framed by
emogan.data.framing (aligned on its landmarks, or the square around its box)."""

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from emogan import atomic
from emogan.config import CropConfig
from emogan.data.detect import DetectedFace, detect_faces, load_detector
from emogan.data.framing import FaceFrame, cut_out, frame_faces
from emogan.data.images import read_rgb
from emogan.data.landmarks import landmark_columns
from emogan.device import resolve_device
from emogan.errors import EmoganError

# crop_a .. crop_ty: the FaceFrame from photo to crop pixels, so a crop traces back to its photo.
COLUMNS = (
    "crop_id", "path", "source_sha256", "source_path", "emotion", "prob",
    "x1", "y1", "x2", "y2", "crop_side", "crop_a", "crop_b", "crop_tx", "crop_ty",
    *landmark_columns(),
)  # fmt: skip


@dataclass(frozen=True)
class Photo:
    sha256: str
    path: Path  # relative to the raw folder
    emotion: str
    width: int
    height: int


@dataclass(frozen=True)
class Crop:
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
    photos = _read_raw_manifest(Path(raw_dir) / "manifest.csv")
    detector = load_detector(
        str(resolve_device(cfg.device, "crop.device")), min_face_size=min(cfg.min_size, 20)
    )
    counts: Counter[str] = Counter()
    crops: list[Crop] = []
    with atomic.atomic_path(Path(out_dir)) as work:
        (work / "images").mkdir(parents=True)
        for group in tqdm(
            _batches(photos, cfg.batch_size), desc="crop", unit="batch", disable=None
        ):
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
        _write_csv(work / "crops.csv", crops)
    metrics = _metrics(photos, crops, counts)
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
        tqdm.write(f"crop: skipped {error}")
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
