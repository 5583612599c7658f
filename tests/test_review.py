"""The decisions file and the review stage that applies it."""

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emogan.config import ReviewConfig
from emogan.data.crop import COLUMNS as CROP_COLUMNS
from emogan.data.review import (
    DECISION_COLUMNS,
    ReviewDecision,
    apply_review,
    forget_decision,
    read_decisions,
    record_decision,
)
from emogan.errors import EmoganError

WHEN = "2026-11-23T10:00:00+00:00"


def _crop_row(crop_id: str, emotion: str) -> dict[str, str]:
    """A crops.csv row; the box, frame and landmarks are zeros, which review does not read."""
    return {column: "0" for column in CROP_COLUMNS} | {
        "crop_id": crop_id,
        "path": f"images/{crop_id}.png",
        "source_sha256": "ab" * 32,
        "source_path": f"images/{emotion}/{'ab' * 32}.jpg",
        "emotion": emotion,
        "prob": "0.99",
    }


def _crops(folder: Path, labels: dict[str, str]) -> Path:
    """A crop-stage output with one small PNG per crop_id -> folder emotion."""
    (folder / "images").mkdir(parents=True)
    with (folder / "crops.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CROP_COLUMNS)
        writer.writeheader()
        for index, (crop_id, emotion) in enumerate(labels.items()):
            pixels = np.full((30, 30, 3), index * 20, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / f"{crop_id}.png")
            writer.writerow(_crop_row(crop_id, emotion))
    return folder


def _decisions(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(DECISION_COLUMNS)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("unreviewed", ["keep", "drop"])
def test_review_keeps_drops_relabels_and_follows_the_policy(
    tmp_path: Path, unreviewed: str
) -> None:
    crops = _crops(tmp_path / "crops", {"a-00": "happy", "b-00": "happy", "c-00": "sad",
                                        "d-00": "sad"})  # fmt: skip
    decisions = _decisions(tmp_path / "decisions.csv", [
        ["a-00", "keep", "", "ann", WHEN, ""],
        ["b-00", "relabel", "fear", "ann", WHEN, "background face"],
        ["c-00", "drop", "", "ann", WHEN, "a lamp"],
        ["gone-00", "drop", "", "ann", WHEN, "crop of an earlier run"],
    ])  # fmt: skip
    cfg = ReviewConfig(decisions=decisions, unreviewed=unreviewed)
    out = tmp_path / "reviewed"
    metrics = apply_review(cfg, crops, out, tmp_path / "review.json")

    assert metrics["kept"] == 1 and metrics["relabelled"] == 1 and metrics["dropped"] == 1
    assert metrics["unreviewed"] == 1 and metrics["stale"] == 1
    with (out / "reviewed.csv").open() as handle:
        rows = {row["crop_id"]: row for row in csv.DictReader(handle)}
    expected = {"a-00": "happy", "b-00": "fear"} | ({"d-00": "sad"} if unreviewed == "keep" else {})
    assert {crop_id: row["emotion"] for crop_id, row in rows.items()} == expected
    assert rows["b-00"]["label"] == "2" and rows["b-00"]["original_emotion"] == "happy"
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert on_disk == {row["path"] for row in rows.values()}
    assert (out / "fear/b-00.png").read_bytes() == (crops / "images/b-00.png").read_bytes()
    assert json.loads((tmp_path / "review.json").read_text())["per_emotion"]["fear"] == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            ["a-00", "kept", "", "ann", WHEN, ""],
            "line 3: action 'kept' is not keep, drop or relabel",
        ),
        (["a-00", "relabel", "joy", "ann", WHEN, ""], "line 3: relabel needs a label from angry"),
        (["a-00", "keep", "sad", "ann", WHEN, ""], "line 3: label 'sad' given for keep"),
        (["a-00", "drop", "", "ann", "yesterday", ""], "line 3: decided_at 'yesterday' is not"),
        (["", "drop", "", "ann", WHEN, ""], "line 3: empty crop_id"),
    ],
)
def test_a_malformed_row_fails_with_its_line_number(
    tmp_path: Path, row: list[str], message: str
) -> None:
    path = _decisions(tmp_path / "decisions.csv", [["z-00", "keep", "", "ann", WHEN, ""], row])
    with pytest.raises(EmoganError) as caught:
        read_decisions(path)
    assert str(caught.value).startswith(f"{path} {message}")


def test_a_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "decisions.csv"
    path.write_text("crop_id,action\na-00,keep\n")
    with pytest.raises(EmoganError, match=r"decisions.csv line 1: missing column 'label'"):
        read_decisions(path)


def test_record_and_forget_rewrite_one_row_per_crop(tmp_path: Path) -> None:
    path = tmp_path / "review" / "decisions.csv"
    record_decision(path, ReviewDecision("b-01", "drop", "", "ann", WHEN))
    record_decision(path, ReviewDecision("a-01", "keep", "", "ann", WHEN))
    record_decision(path, ReviewDecision("b-01", "relabel", "sad", "bob", WHEN, "second look"))
    lines = path.read_text().splitlines()
    assert lines[1].startswith("a-01,keep") and lines[2].startswith("b-01,relabel,sad,bob")
    assert len(lines) == 3
    forget_decision(path, "a-01")
    assert set(read_decisions(path)) == {"b-01"}


def test_review_without_crops_names_the_stage_to_run(tmp_path: Path) -> None:
    cfg = ReviewConfig(decisions=tmp_path / "none.csv")
    with pytest.raises(EmoganError, match=r"crops.csv: not found \(run the crop stage first\)"):
        apply_review(cfg, tmp_path / "crops", tmp_path / "out", tmp_path / "m.json")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace("crop_id,", "", 1), "line 1: missing column 'crop_id'"),
        (lambda text: text.replace(",0.99,", ",high,", 1), "line 2: prob 'high' is not a number"),
        (lambda text: text.replace(",sad,", ",glum,", 1), "line 3: emotion 'glum' is not one of"),
        (lambda text: text.replace(",0\n", "\n", 1), "line 2: 24 fields, the header has 25"),
    ],
)
def test_a_malformed_crop_row_fails_with_its_file_and_line(
    tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    crops = _crops(tmp_path / "crops", {"a-00": "happy", "b-00": "sad"})
    csv_path = crops / "crops.csv"
    csv_path.write_text(edit(csv_path.read_text()))
    cfg = ReviewConfig(decisions=tmp_path / "none.csv")
    with pytest.raises(EmoganError) as caught:
        apply_review(cfg, crops, tmp_path / "out", tmp_path / "m.json")
    assert str(caught.value).startswith(f"{csv_path} {message}")
