"""The demo's reviewer: decides every crop of a drawn photo from the demo's ground truth.

A human reviewer looks at crops, so the simulation runs after the crop stage (crop ids exist
only then): a crop that covers no drawn face is dropped, a face whose own emotion differs from
its photo's folder (a face in the background) is relabelled, the rest are kept. Crops of photos
that are not part of the demo world get no decision.
"""

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from emogan import atomic
from emogan.data.crop import CropRecord, read_crops
from emogan.data.review import ReviewDecision, write_decisions

REVIEWER = "simulated"
DECIDED_AT = "2026-01-01T00:00:00+00:00"  # fixed, so the stage's output is deterministic
MIN_IOU = 0.4

Box = Sequence[float]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_match(box: Box, truths: Sequence[Box], min_iou: float = MIN_IOU) -> int | None:
    """Index of the ground-truth box that overlaps `box` most, if it overlaps enough."""
    scores = [box_iou(box, truth) for truth in truths]
    if not scores or max(scores) < min_iou:
        return None
    return scores.index(max(scores))


def simulate_review(
    demo_dir: Path, raw_dir: Path, crops_dir: Path, out_path: Path, metrics_path: Path
) -> dict:
    """Write the simulated reviewer's decisions; its metrics include the crop stage's recall of
    the drawn faces, the demo's check that MTCNN finds them."""
    truths_by_photo = _ground_truth(Path(demo_dir) / "ground_truth.csv")
    photo_of_sha = _demo_photos(Path(raw_dir) / "manifest.csv", set(truths_by_photo))
    decisions, found = [], set()
    for crop in read_crops(crops_dir):
        photo = photo_of_sha.get(crop.source_sha256)
        if photo is None:
            continue
        decision, match = _decide(crop, truths_by_photo[photo])
        decisions.append(decision)
        if match is not None:
            found.add((photo, match))
    write_decisions(Path(out_path), decisions)
    counts = Counter(d.action for d in decisions)
    drawn = sum(len(truths_by_photo[photo]) for photo in set(photo_of_sha.values()))
    metrics = {
        **{action: counts[action] for action in ("keep", "drop", "relabel")},
        "faces_drawn": drawn,
        "faces_found": len(found),
        "recall": round(len(found) / drawn, 4) if drawn else 0.0,
    }
    atomic.write_json(Path(metrics_path), metrics)
    return metrics


def _decide(crop: CropRecord, truths: list[dict[str, str]]) -> tuple[ReviewDecision, int | None]:
    match = best_match(crop.box, [[float(t[k]) for k in ("x1", "y1", "x2", "y2")] for t in truths])
    if match is None:
        return ReviewDecision(crop.crop_id, "drop", "", REVIEWER, DECIDED_AT, "no face"), None
    face = truths[match]
    if face["emotion"] != crop.emotion:
        action, label, note = "relabel", face["emotion"], f"face {face['face']}, in the background"
    else:
        action, label, note = "keep", "", f"face {face['face']}"
    return ReviewDecision(crop.crop_id, action, label, REVIEWER, DECIDED_AT, note), match


def _ground_truth(path: Path) -> dict[str, list[dict[str, str]]]:
    """Drawn faces by photo; every demo photo has an entry, faceless ones an empty list."""
    by_photo: dict[str, list[dict[str, str]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_photo.setdefault(row["photo"], []).append(row)
    manifest = path.with_name("manifest.csv")
    with manifest.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_photo.setdefault(row["url_or_path"], [])
    return by_photo


def _demo_photos(raw_manifest: Path, demo_photos: set[str]) -> dict[str, str]:
    """sha256 -> demo photo, for the collected images that came from the demo manifest."""
    with raw_manifest.open(newline="", encoding="utf-8") as handle:
        return {
            row["sha256"]: row["url_or_path"]
            for row in csv.DictReader(handle)
            if row["status"] == "ok" and row["url_or_path"] in demo_photos
        }


def drawn_face_of_crops(demo_dir: Path, raw_dir: Path, crops_dir: Path) -> dict[str, str]:
    """crop_id -> the drawn face it covers, as <photo>#<face> (ground_truth.csv's photo and
    face), for the crops of demo photos that cover one; matched as the simulated reviewer does."""
    truths_by_photo = _ground_truth(Path(demo_dir) / "ground_truth.csv")
    photo_of_sha = _demo_photos(Path(raw_dir) / "manifest.csv", set(truths_by_photo))
    faces = {}
    for crop in read_crops(crops_dir):
        photo = photo_of_sha.get(crop.source_sha256)
        if photo is None:
            continue
        truths = truths_by_photo[photo]
        boxes = [[float(t[k]) for k in ("x1", "y1", "x2", "y2")] for t in truths]
        match = best_match(crop.box, boxes)
        if match is not None:
            faces[crop.crop_id] = f"{photo}#{truths[match]['face']}"
    return faces
