"""The demo world: deterministic, well-formed, found by MTCNN and learnable by a classifier."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from emogan.bench.demo_world import classifier_scores, detection_scores
from emogan.config import DemoConfig, Fer2013Config, MergeConfig
from emogan.data.demo import FERPLUS_FILE, MANIFEST_COLUMNS, MIN_FACE, fer_counts, make_demo
from emogan.data.detect import detect_faces, load_detector
from emogan.data.duplicates import group_near_duplicates
from emogan.data.ferplus import HEADER, read_votes, vote_labels
from emogan.data.merge import merge_dataset, resize_square
from emogan.data.planted import alter
from emogan.emotions import EMOTIONS, LABEL_OF

SMALL = DemoConfig(
    photos_per_emotion=2,
    faceless_photos=3,
    fer_train_per_emotion=20,
    fer_test_per_emotion=4,
    planted_duplicates=0,  # tests/test_duplicates.py plants them
)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(SMALL, out)
    return out


def test_same_seed_same_bytes_other_seed_differs(small_demo: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_demo(SMALL, again)
    assert _tree(again) == _tree(small_demo)

    other = tmp_path / "other"
    make_demo(SMALL.model_copy(update={"seed": 1}), other)
    first, second = _tree(small_demo), _tree(other)
    assert first.keys() == second.keys()
    photos = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != second[name] for name in photos)
    assert first["fer2013.csv"] != second["fer2013.csv"]


def test_items_do_not_depend_on_how_many_there_are(small_demo: Path, tmp_path: Path) -> None:
    more = SMALL.model_copy(update={"photos_per_emotion": 3, "fer_train_per_emotion": 30})
    make_demo(more, tmp_path / "more")
    for emotion in EMOTIONS:
        for index in range(SMALL.photos_per_emotion):
            name = f"photos/{emotion}/{emotion}_{index:04d}.jpg"
            assert (tmp_path / "more" / name).read_bytes() == (small_demo / name).read_bytes()


def test_layout_and_manifest(small_demo: Path) -> None:
    assert {p.name for p in small_demo.iterdir()} == {
        "photos", "manifest.csv", "ground_truth.csv", "fer2013.csv", FERPLUS_FILE, "summary.json",
        "planted_duplicates.csv",
    }  # fmt: skip
    with (small_demo / "manifest.csv").open(encoding="utf-8") as handle:
        assert handle.readline().strip() == ",".join(MANIFEST_COLUMNS)
    manifest = _rows(small_demo / "manifest.csv")
    on_disk = {str(p.relative_to(small_demo)) for p in (small_demo / "photos").rglob("*.jpg")}
    listed = [row["url_or_path"] for row in manifest]
    assert sorted(listed) == sorted(on_disk)
    assert len(listed) == 7 * SMALL.photos_per_emotion + SMALL.faceless_photos
    for row in manifest:
        assert row["url_or_path"] == f"photos/{row['emotion']}/{Path(row['url_or_path']).name}"
        assert (row["license"], row["creator"], row["source"]) == ("CC0-1.0", "emogan demo", "demo")
        assert row["emotion"] in EMOTIONS and row["keyword"]
        image = cv2.imread(str(small_demo / row["url_or_path"]))
        assert image.shape == (SMALL.photo_height, SMALL.photo_width, 3)


def test_ground_truth_faces(small_demo: Path) -> None:
    manifest = {row["url_or_path"]: row["emotion"] for row in _rows(small_demo / "manifest.csv")}
    truth = _rows(small_demo / "ground_truth.csv")
    with_faces = {row["photo"] for row in truth}
    assert len(set(manifest) - with_faces) == SMALL.faceless_photos
    for row in truth:
        assert manifest[row["photo"]] == row["photo_emotion"]
        x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= SMALL.photo_width and 0 <= y1 < y2 <= SMALL.photo_height
        assert y2 - y1 >= 0.9 * MIN_FACE
        assert row["background"] == str(row["emotion"] != row["photo_emotion"])
        assert row["occluded"] in ("True", "False")
    for photo in with_faces:
        faces = [row for row in truth if row["photo"] == photo]
        main = faces[0]
        assert main["face"] == "0" and main["emotion"] == main["photo_emotion"]
        heights = [float(row["y2"]) - float(row["y1"]) for row in faces]
        assert heights[0] == max(heights)
    summary = json.loads((small_demo / "summary.json").read_text())
    assert summary["faces"] == len(truth)
    assert summary["photos"] == len(manifest)


def test_fer2013_csv(small_demo: Path) -> None:
    rows = _rows(small_demo / "fer2013.csv")
    assert list(rows[0]) == ["emotion", "pixels", "Usage"]
    for row in rows:
        pixels = [int(v) for v in row["pixels"].split(" ")]
        assert len(pixels) == 48 * 48 and min(pixels) >= 0 and max(pixels) <= 255
        assert np.std(pixels) > 3  # a face, not a flat square
    truth = zip(_true_labels(small_demo), rows, strict=True)  # written labels are partly wrong
    counts = Counter((EMOTIONS[label], row["Usage"]) for label, row in truth)
    assert dict(counts) == {
        (emotion, usage): n for emotion, usages in fer_counts(SMALL).items()
        for usage, n in usages.items()
    }  # fmt: skip
    training = {emotion: counts[emotion, "Training"] for emotion in EMOTIONS}
    assert min(training, key=training.get) == "disgust"
    assert max(training, key=training.get) == "happy"
    mean = sum(training.values()) / len(training)
    assert abs(mean - SMALL.fer_train_per_emotion) <= 1
    assert all(counts[e, "PublicTest"] >= 1 and counts[e, "PrivateTest"] >= 1 for e in EMOTIONS)
    assert {int(row["emotion"]) for row in rows} == set(LABEL_OF.values())


def test_fer_faces_are_different_people(small_demo: Path) -> None:
    """Merge's near-duplicate detection, at the size merge looks, groups each face with its JPEG
    copy and with nothing else: faces of one emotion sharing one geometry and shading would
    match each other as closely as a copy matches its original."""
    rows = _rows(small_demo / "fer2013.csv")
    faces = [np.array(row["pixels"].split(" "), np.uint8).reshape(48, 48) for row in rows]
    rng = np.random.default_rng(0)
    copies = [alter(face, "jpeg", rng) for face in faces]  # in the CSV, as the demo plants them
    merged = [resize_square(face, 32) for face in [*faces, *copies]]
    groups = group_near_duplicates(merged, MergeConfig().duplicate_similarity)
    assert groups.members == [[i, len(faces) + i] for i in range(len(faces))]


def _true_labels(demo: Path) -> list[int]:
    """The true emotion of every FER row: its votes' plurality, which the demo draws so."""
    fer_rows = len(_rows(demo / "fer2013.csv"))
    votes = read_votes(demo / FERPLUS_FILE, demo / "fer2013.csv", fer_rows)
    return vote_labels(votes, np.zeros(fer_rows, np.int64), "plurality", ()).labels.tolist()


def test_ferplus_votes_are_in_the_real_format_and_planted_noise_is_counted(small_demo):
    fer_rows, votes = _rows(small_demo / "fer2013.csv"), _rows(small_demo / FERPLUS_FILE)
    assert tuple(votes[0]) == HEADER and len(votes) == len(fer_rows)
    assert [row["Usage"] for row in votes] == [row["Usage"] for row in fer_rows]
    assert [row["Image name"] for row in votes] == [f"fer{k:07d}.png" for k in range(len(votes))]
    assert all(sum(int(v) for v in list(row.values())[2:]) == 10 for row in votes)
    written = [int(row["emotion"]) for row in fer_rows]
    wrong = sum(w != t for w, t in zip(written, _true_labels(small_demo), strict=True))
    summary = json.loads((small_demo / "summary.json").read_text())
    assert wrong == summary["fer2013_mislabelled"]
    assert 0.02 * len(fer_rows) <= wrong <= 0.1 * len(fer_rows)  # fer_label_noise 0.05


@pytest.mark.parametrize("mode", ["majority", "plurality"])
def test_ferplus_relabels_the_planted_noise_back(small_demo, tmp_path, mode):
    fer = Fer2013Config(
        path=small_demo / "fer2013.csv", ferplus=small_demo / FERPLUS_FILE, ferplus_mode=mode
    )
    out = tmp_path / "processed"
    metrics = merge_dataset(
        fer, MergeConfig(include_custom=False), 16, tmp_path, out, tmp_path / "m.json"
    )
    truth = _true_labels(small_demo)
    with (out / "index.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):  # every face kept is in its true emotion
            line = int(row["origin"].removeprefix("fer2013:line:"))
            assert int(row["label"]) == truth[line - 2], row
    planted = json.loads((small_demo / "summary.json").read_text())["fer2013_mislabelled"]
    relabelled, dropped = metrics["ferplus"]["relabelled"], metrics["ferplus"]["dropped"]
    if mode == "plurality":  # the truth always leads the votes: every planted label goes back
        assert relabelled["all"]["total"] == planted and dropped["all"]["total"] == 0
    else:  # a mislabelled face without a majority is dropped instead
        assert 0.7 * planted <= relabelled["all"]["total"] <= planted
        assert dropped["all"]["total"] == dropped["all"]["no_majority"] > 0


def test_mtcnn_finds_the_drawn_faces(tmp_path: Path) -> None:
    cfg = SMALL.model_copy(update={"photos_per_emotion": 4, "faceless_photos": 4})
    make_demo(cfg, tmp_path / "demo")
    scores = detection_scores(tmp_path / "demo")
    assert scores["faces"] >= 7 * cfg.photos_per_emotion
    assert scores["recall"] >= 0.85, scores
    assert scores["mean_prob"] >= 0.95, scores
    assert scores["false_positives_per_photo"] <= 0.2, scores


def test_detect_faces_on_mixed_sizes_and_empty_images() -> None:
    blank = np.full((120, 100, 3), 128, np.uint8)
    found = detect_faces(load_detector(), [blank, blank, np.zeros((90, 160, 3), np.uint8)])
    assert found == [[], [], []]


def test_demo_is_learnable(tmp_path: Path) -> None:
    cfg = DemoConfig(
        photos_per_emotion=1,
        faceless_photos=0,
        fer_train_per_emotion=250,
        fer_test_per_emotion=40,
        fer_label_noise=0.0,  # the faces are learnable; planted wrong labels would cap the score
    )
    make_demo(cfg, tmp_path / "demo")
    scores = classifier_scores(tmp_path / "demo" / "fer2013.csv")
    assert scores["classifier_test_accuracy"] >= 0.95, scores


INTERRUPTED_RUN = """
import signal
import sys
from pathlib import Path
# A shell's background job starts with SIGINT ignored, and Python keeps that: restore Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)
from emogan.config import DemoConfig
from emogan.data.demo import make_demo
make_demo(DemoConfig(seed=int(sys.argv[2])), Path(sys.argv[1]))
"""


def _interrupt_demo(out: Path, seed: int) -> None:
    """Start a full-size demo run in a child process and interrupt it once it is writing photos."""
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED_RUN, str(out), str(seed)])
    try:
        deadline = time.monotonic() + 60
        while not any(out.parent.glob(f".{out.name}.*.tmp/{out.name}/photos/*/*.jpg")):
            assert child.poll() is None and time.monotonic() < deadline, "run never got going"
            time.sleep(0.05)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) != 0
    finally:
        child.kill()


def test_interrupted_run_leaves_old_output_or_none(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / "demo"
    _interrupt_demo(fresh, seed=0)
    assert list(fresh.parent.iterdir()) == []

    existing = tmp_path / "existing" / "demo"
    make_demo(SMALL, existing)
    before = _tree(existing)
    _interrupt_demo(existing, seed=1)
    assert _tree(existing) == before
    assert [p.name for p in existing.parent.iterdir()] == ["demo"]
