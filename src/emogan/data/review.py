"""Human review of the crops: the decisions file, and the review stage that applies it.

The decisions file is small and lives in git: one row per reviewed crop (`crop_id, action,
label, reviewer, decided_at, note`). The web tool and hand edits both go through this module.
"""

import csv
import fcntl
import io
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from emogan import atomic
from emogan.config import ReviewConfig
from emogan.data.crop import CropRecord, read_crops
from emogan.data.csv_rows import csv_rows
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.errors import EmoganError

DECISION_COLUMNS = ("crop_id", "action", "label", "reviewer", "decided_at", "note")
REVIEWED_COLUMNS = (
    "crop_id", "path", "emotion", "label", "original_emotion", "decision", "source_sha256", "prob",
)  # fmt: skip
Action = Literal["keep", "drop", "relabel"]


@dataclass(frozen=True)
class ReviewDecision:
    crop_id: str
    action: Action
    label: str  # the emotion a relabel moves the crop to; empty for keep and drop
    reviewer: str
    decided_at: str  # ISO 8601
    note: str = ""


def parse_decision(row: dict[str, str | None], where: str) -> ReviewDecision:
    """One decision from a CSV row; `where` ("file line N") starts the error message."""
    values = {column: (row.get(column) or "").strip() for column in DECISION_COLUMNS}
    if not values["crop_id"]:
        raise EmoganError(f"{where}: empty crop_id")
    if values["action"] not in ("keep", "drop", "relabel"):
        raise EmoganError(f"{where}: action {values['action']!r} is not keep, drop or relabel")
    if values["action"] == "relabel" and values["label"] not in EMOTIONS:
        raise EmoganError(
            f"{where}: relabel needs a label from {', '.join(EMOTIONS)} (got {values['label']!r})"
        )
    if values["action"] != "relabel" and values["label"]:
        raise EmoganError(f"{where}: label {values['label']!r} given for {values['action']}")
    try:
        datetime.fromisoformat(values["decided_at"])
    except ValueError:
        raise EmoganError(
            f"{where}: decided_at {values['decided_at']!r} is not an ISO 8601 time"
        ) from None
    return ReviewDecision(**values)


def read_decisions(path: Path) -> dict[str, ReviewDecision]:
    """Decisions by crop_id (a later row for the same crop wins); no file means none yet."""
    path = Path(path)
    if not path.exists():
        return {}
    decisions = {}
    for row, where in csv_rows(path, DECISION_COLUMNS):
        decision = parse_decision(row, where)
        decisions[decision.crop_id] = decision
    return decisions


def write_decisions(path: Path, decisions: Iterable[ReviewDecision]) -> None:
    """The whole file, sorted by crop_id so that git diffs show only what changed."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DECISION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(d) for d in sorted(decisions, key=lambda d: d.crop_id))
    atomic.write_text(Path(path), buffer.getvalue())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the decisions file across threads, tabs and servers."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_decision(path: Path, decision: ReviewDecision) -> None:
    """Add or replace one crop's decision; the file on disk is complete at every moment."""
    with _locked(Path(path)):
        decisions = read_decisions(path)
        decisions[decision.crop_id] = decision
        write_decisions(path, decisions.values())


def forget_decision(path: Path, crop_id: str) -> None:
    """Undo: the crop becomes unreviewed again."""
    with _locked(Path(path)):
        decisions = read_decisions(path)
        if decisions.pop(crop_id, None) is not None:
            write_decisions(path, decisions.values())


def apply_review(
    cfg: ReviewConfig,
    crops_dir: Path,
    out_dir: Path,
    metrics_path: Path,
) -> dict:
    """Copy the crops that survive review into <emotion>/ folders, with reviewed.csv."""
    crops = read_crops(crops_dir)
    decisions = read_decisions(cfg.decisions)
    counts: Counter[str] = Counter()
    rows = []
    with atomic.atomic_path(Path(out_dir)) as work:
        for crop in crops:
            decision = decisions.get(crop.crop_id)
            outcome = decision.action if decision else f"unreviewed_{cfg.unreviewed}"
            counts[outcome] += 1
            if outcome in ("drop", "unreviewed_drop"):
                continue
            emotion = decision.label if outcome == "relabel" else crop.emotion
            relative = f"{emotion}/{crop.crop_id}.png"
            (work / emotion).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(crops_dir) / crop.path, work / relative)
            rows.append(_reviewed_row(crop, relative, emotion, outcome))
        _write_reviewed_csv(work / "reviewed.csv", rows)
    stale = sorted(set(decisions) - {crop.crop_id for crop in crops})
    metrics = {
        "crops": len(crops),
        "kept": counts["keep"],
        "dropped": counts["drop"],
        "relabelled": counts["relabel"],
        "unreviewed": counts["unreviewed_keep"] + counts["unreviewed_drop"],
        "unreviewed_policy": cfg.unreviewed,
        "stale": len(stale),
        "per_emotion": {e: sum(r["emotion"] == e for r in rows) for e in EMOTIONS},
    }
    if stale:
        print(f"review: {len(stale)} decisions name crops that no longer exist, e.g. {stale[0]}")
    atomic.write_json(Path(metrics_path), metrics)
    return metrics


def _reviewed_row(crop: CropRecord, path: str, emotion: str, outcome: str) -> dict:
    return {
        "crop_id": crop.crop_id,
        "path": path,
        "emotion": emotion,
        "label": LABEL_OF[emotion],
        "original_emotion": crop.emotion,
        "decision": "unreviewed" if outcome.startswith("unreviewed") else outcome,
        "source_sha256": crop.source_sha256,
        "prob": crop.prob,
    }


def _write_reviewed_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REVIEWED_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
