"""Near-duplicate detection: candidates, registration, groups, the demo's planted copies and
merge's policies."""

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from emogan.bench.merge import _smooth_faces
from emogan.config import (
    ConfigError,
    DemoConfig,
    Fer2013Config,
    MergeConfig,
    load_params,
    parse_params,
)
from emogan.data.collect import collect_images
from emogan.data.crop import crop_faces, read_crops
from emogan.data.demo import PLANTED_CSV, make_demo
from emogan.data.duplicates import (
    DUPLICATE_COLUMNS,
    aligned_similarity,
    candidate_pairs,
    descriptors,
    group_near_duplicates,
)
from emogan.data.fer2013 import read_fer2013
from emogan.data.merge import DUPLICATES_CSV, convert, custom_split, merge_dataset
from emogan.data.planted import ALTERATIONS, alter
from emogan.emotions import LABEL_OF

ROOT = Path(__file__).resolve().parents[1]

SIMILARITY = MergeConfig().duplicate_similarity


def faces(count: int, seed: int = 0) -> np.ndarray:
    """Smooth random 48x48 faces: unrelated to one another."""
    return _smooth_faces(np.random.default_rng(seed), count)


def test_candidate_pairs_are_each_faces_nearest_by_cosine() -> None:
    described = descriptors(list(faces(300)))
    cosine = described @ described.T
    np.fill_diagonal(cosine, -np.inf)
    nearest = np.argsort(-cosine, axis=1)[:, :2]
    expected = {tuple(sorted((i, int(j)))) for i in range(300) for j in nearest[i]}
    assert set(map(tuple, candidate_pairs(described, 2).tolist())) == expected
    assert len(candidate_pairs(described[:1])) == 0  # one face has no pair


@pytest.mark.parametrize("image_size", [32, 48])
def test_each_alteration_is_found_and_unrelated_faces_are_not(image_size: int) -> None:
    originals = faces(400)
    rng = np.random.default_rng(1)
    copies = [alter(originals[k], alteration, rng) for k, alteration in enumerate(ALTERATIONS)]
    everything = [convert(face, image_size, 1) for face in [*originals, *copies]]
    groups = group_near_duplicates(everything, SIMILARITY)
    assert groups.members == [[k, len(originals) + k] for k in range(len(ALTERATIONS))]
    assert np.all(groups.similarity[[0, 400]] >= SIMILARITY)
    assert np.isnan(groups.similarity[len(ALTERATIONS)])  # a face in no group


def test_registration_finds_a_reframed_copy_a_hash_would_miss() -> None:
    """MTCNN frames a face found again in another photo a little differently: 6% larger and
    2 px off, a slight turn. Registered, it still matches its original; an unrelated face does
    not, and a flat face is no one's copy."""
    face = faces(1, seed=7)[0]
    turn = cv2.getRotationMatrix2D((23.5 + 2, 23.5 - 1), 3, 1.06)
    reframed = cv2.warpAffine(face, turn, (48, 48), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    assert aligned_similarity(face, reframed) >= SIMILARITY
    assert aligned_similarity(face, faces(1, seed=8)[0]) < SIMILARITY
    assert aligned_similarity(face, np.full_like(face, 255)) == -1.0


def test_alter_keeps_the_size_and_changes_the_pixels() -> None:
    face = faces(1)[0]
    for alteration in ALTERATIONS:
        copy = alter(face, alteration, np.random.default_rng(0))
        assert copy.shape == face.shape and copy.dtype == np.uint8
        assert not np.array_equal(copy, face)
    with pytest.raises(ValueError, match="unknown alteration"):
        alter(face, "mirror", np.random.default_rng(0))


# --- merge -----------------------------------------------------------------------------------

# (label, usage) per row; row 3 copies row 1 into PublicTest (a leak), row 4 copies row 2 within
# Training, and the crop is row 0 enlarged, in colour: the same picture in FER2013 and the crops.
ROWS = [(3, "Training"), (4, "Training"), (1, "Training"), (4, "PublicTest"), (1, "Training"),
        (0, "PublicTest"), (6, "PrivateTest")]  # fmt: skip
CROP_ID = "00000000000000aa-00"  # custom_split puts it in train at fraction 0.15 (asserted below)


def write_world(tmp_path: Path) -> None:
    assert custom_split(CROP_ID, MergeConfig().custom_test_fraction) == "train"
    pixels = faces(len(ROWS), seed=5)
    pixels[3] = alter(pixels[1], "jpeg", np.random.default_rng(0))
    pixels[4] = alter(pixels[2], "brighten", np.random.default_rng(0))
    lines = ["emotion,pixels,Usage"] + [
        f"{label},{' '.join(map(str, p.ravel().tolist()))},{usage}"
        for p, (label, usage) in zip(pixels, ROWS, strict=True)
    ]
    (tmp_path / "fer.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    reviewed = tmp_path / "reviewed"
    (reviewed / "happy").mkdir(parents=True)
    enlarged = cv2.resize(pixels[0], (160, 160), interpolation=cv2.INTER_CUBIC)
    Image.fromarray(cv2.cvtColor(enlarged, cv2.COLOR_GRAY2RGB)).save(reviewed / "happy/c.png")
    (reviewed / "reviewed.csv").write_text(
        f"crop_id,path,emotion,label\n{CROP_ID},happy/c.png,happy,3\n", encoding="utf-8"
    )


def merge(tmp_path: Path, policy: str) -> tuple[list[dict], list[dict], dict]:
    write_world(tmp_path)
    out = tmp_path / policy
    metrics = merge_dataset(
        Fer2013Config(path=tmp_path / "fer.csv", ferplus_mode="original"),
        MergeConfig(duplicates=policy),
        image_size=32,
        reviewed_dir=tmp_path / "reviewed",
        out_dir=out,
        metrics_path=tmp_path / f"{policy}.json",
    )
    assert json.loads((tmp_path / f"{policy}.json").read_text()) == metrics
    with (out / "index.csv").open(newline="", encoding="utf-8") as handle:
        index = list(csv.DictReader(handle))
    with (out / DUPLICATES_CSV).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == DUPLICATE_COLUMNS
        duplicates = list(reader)
    for row in index:
        assert (out / row["path"]).is_file()
    return index, duplicates, metrics


def line(n: int) -> str:
    return f"fer2013:line:{n + 2}"


def test_groups_span_splits_and_sources_and_keep_drops_nothing(tmp_path: Path) -> None:
    index, duplicates, metrics = merge(tmp_path, "keep")
    groups: dict[str, set[str]] = {}
    for row in duplicates:
        groups.setdefault(row["group"], set()).add(row["origin"])
    assert sorted(map(sorted, groups.values())) == sorted(
        [sorted([line(0), CROP_ID]), [line(1), line(3)], [line(2), line(4)]]
    )
    assert len(index) == len(ROWS) + 1
    assert {row["dropped"] for row in duplicates} == {"0"}
    assert all(float(row["similarity"]) >= SIMILARITY for row in duplicates)
    assert metrics["duplicates"] == {
        "groups": 3, "faces_in_groups": 6, "crowds": 0, "faces_in_crowds": 0,
        "groups_within_one_split": 2, "groups_across_splits": 1, "groups_across_sources": 1,
        "dropped": {"train": {"fer2013": 0, "custom": 0, "total": 0},
                    "test": {"fer2013": 0, "custom": 0, "total": 0}, "total": 0},
    }  # fmt: skip


def test_drop_cross_split_removes_the_test_copy_of_a_train_face(tmp_path: Path) -> None:
    index, duplicates, metrics = merge(tmp_path, "drop_cross_split")
    dropped = {row["origin"] for row in duplicates if row["dropped"] == "1"}
    assert dropped == {line(3)}
    assert line(3) not in {row["origin"] for row in index}
    assert len(index) == len(ROWS)
    assert not (tmp_path / "drop_cross_split" / "test/sad/fer-000005.png").exists()
    assert metrics["duplicates"]["dropped"]["test"] == {"fer2013": 1, "custom": 0, "total": 1}
    assert metrics["test"]["all"]["total"] == 2  # of 3 test rows


def test_drop_all_keeps_one_face_per_group_train_then_fer2013(tmp_path: Path) -> None:
    index, duplicates, metrics = merge(tmp_path, "drop_all")
    dropped = {row["origin"] for row in duplicates if row["dropped"] == "1"}
    # line 1 / line 3: the train face stays; line 0 / crop, both train: the FER2013 face stays;
    # line 2 / line 4, both train FER2013: the first by path stays
    assert dropped == {line(3), CROP_ID, line(4)}
    assert {row["origin"] for row in index}.isdisjoint(dropped)
    assert len(index) == len(ROWS) + 1 - 3
    assert metrics["duplicates"]["dropped"]["total"] == 3
    assert metrics["duplicates"]["dropped"]["train"]["custom"] == 1


def test_a_bad_policy_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as error:
        parse_params({"merge": {"duplicates": "drop_some"}})
    message = str(error.value)
    assert "merge.duplicates" in message and "drop_some" in message and "\n" not in message
    with pytest.raises(ConfigError, match="merge.duplicate_similarity"):
        parse_params({"merge": {"duplicate_similarity": 1.5}})


# --- the demo's planted copies ------------------------------------------------------------------


def test_demo_plants_the_copies_its_ground_truth_lists(tmp_path: Path) -> None:
    cfg = DemoConfig(photos_per_emotion=1, faceless_photos=0, fer_train_per_emotion=30,
                     fer_test_per_emotion=6, planted_duplicates=8)  # fmt: skip
    make_demo(cfg, tmp_path / "demo")
    with (tmp_path / "demo" / PLANTED_CSV).open(newline="", encoding="utf-8") as handle:
        planted = list(csv.DictReader(handle))
    kinds = Counter(row["alteration"] for row in planted)
    assert kinds == Counter({**dict.fromkeys(ALTERATIONS, 2), "web_photo": 2}) | Counter(
        relisted=kinds["relisted"]
    )
    assert kinds["relisted"] >= 2  # one per drawn face of two photos
    photos = {row["url_or_path"] for row in csv.DictReader((tmp_path / "demo/manifest.csv").open())}
    for row in planted:
        if row["alteration"] in ALTERATIONS:
            continue
        assert row["copy"].split("#")[0] in photos
        assert (tmp_path / "demo" / row["copy"].split("#")[0]).is_file()
    fer = read_fer2013(Fer2013Config(path=tmp_path / "demo/fer2013.csv"))
    gray = [convert(np.asarray(face), 32, 1) for face in fer.images]
    row_of = {origin: k for k, origin in enumerate(fer.origins)}
    usage_of = dict(zip(fer.origins, fer.splits, strict=True))
    crossing = 0
    for row in planted:
        if row["alteration"] not in ALTERATIONS:
            continue
        copy, original = row_of[row["copy"]], row_of[row["original"]]
        assert not np.array_equal(gray[copy], gray[original]), row
        assert aligned_similarity(gray[original], gray[copy]) >= SIMILARITY, row
        assert fer.labels[copy] == fer.labels[original]
        crossing += usage_of[row["copy"]] != usage_of[row["original"]]
    assert crossing >= 2  # of the 4 copies into another Usage, those that change the split


def test_crowds_of_look_alikes_are_listed_not_dropped(tmp_path: Path) -> None:
    """Ten identical faces across train and test chain into one group larger than max_group."""
    face = faces(1, seed=3)[0]
    text = " ".join(map(str, face.ravel().tolist()))
    usages = ["Training"] * 5 + ["PublicTest"] * 5
    lines = ["emotion,pixels,Usage"] + [f"3,{text},{usage}" for usage in usages]
    (tmp_path / "fer.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    metrics = merge_dataset(
        Fer2013Config(path=tmp_path / "fer.csv", ferplus_mode="original"),
        MergeConfig(include_custom=False, duplicate_max_group=9),
        image_size=32,
        reviewed_dir=tmp_path / "none",
        out_dir=tmp_path / "processed",
        metrics_path=tmp_path / "dataset.json",
    )
    with (tmp_path / "processed" / DUPLICATES_CSV).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["crowd"], row["dropped"]) for row in rows] == [("1", "0")] * 10
    assert metrics["duplicates"]["crowds"] == 1 and metrics["duplicates"]["groups"] == 0
    assert metrics["test"]["all"]["total"] == 5


# --- custom crops, through the real collect and crop stages ----------------------------------


def test_a_photo_found_twice_and_in_fer2013_is_one_group(tmp_path: Path) -> None:
    """A portrait at two sizes (85 %), re-encoded, both cropped by MTCNN and aligned, and the first
    crop's face as a FER2013 row (48 px gray): one group spanning both sources."""
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    photos = tmp_path / "photos" / "happy"
    photos.mkdir(parents=True)
    hopper.save(photos / "hopper.jpg", quality=92)
    hopper.resize((435, 510), Image.Resampling.LANCZOS).save(photos / "small.jpg", quality=80)
    params = load_params(ROOT / "params.yaml")
    collect = params.collect.model_copy(update={"from_dir": photos.parent, "manifest": None})
    collect_images(collect, tmp_path / "raw", tmp_path / "collect.json")
    crops_dir = tmp_path / "crops"
    crop = params.crop.model_copy(update={"device": "cpu"})
    crop_faces(crop, tmp_path / "raw", crops_dir, tmp_path / "crop.json")
    crops = read_crops(crops_dir)
    assert len(crops) == 2
    (crops_dir / "reviewed.csv").write_text(
        "crop_id,path,emotion,label\n"
        + "".join(f"{c.crop_id},{c.path},happy,{LABEL_OF['happy']}\n" for c in crops),
        encoding="utf-8",
    )
    gray = convert(np.asarray(Image.open(crops_dir / crops[0].path)), 48, 1)
    (tmp_path / "fer.csv").write_text(
        "emotion,pixels,Usage\n"
        + f"3,{' '.join(map(str, gray.ravel().tolist()))},PublicTest\n"
        + "".join(f"3,{' '.join(map(str, f.ravel().tolist()))},Training\n" for f in faces(20)),
        encoding="utf-8",
    )
    merge_dataset(
        Fer2013Config(path=tmp_path / "fer.csv", ferplus_mode="original"),
        MergeConfig(duplicates="keep"),
        image_size=32,
        reviewed_dir=crops_dir,
        out_dir=tmp_path / "processed",
        metrics_path=tmp_path / "dataset.json",
    )
    with (tmp_path / "processed" / DUPLICATES_CSV).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["group"] for row in rows} == {"1"}
    assert {row["origin"] for row in rows} == {"fer2013:line:2", *(c.crop_id for c in crops)}
