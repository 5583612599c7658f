"""FER2013 reading (CSV and folders) and the merge stage, on small real files."""

import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from emogan.bench.merge import bench_merge
from emogan.config import Fer2013Config, MergeConfig
from emogan.data.fer2013 import CHUNK_ROWS, read_fer2013
from emogan.data.merge import custom_split, merge_dataset
from emogan.emotions import LABEL_OF
from emogan.errors import EmoganError

HEADER = "emotion,pixels,Usage"
RED_AS_GRAY = 76  # 0.299 * 255: cvtColor of pure red; read as BGR it would be 0.114 * 255 = 29


def face(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)


def pixel_text(image: np.ndarray) -> str:
    return " ".join(map(str, image.ravel().tolist()))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# (label, usage) of the small FER2013 CSV most tests use; its data lines are 2..8.
SMALL_ROWS = [
    (3, "Training"), (4, "Training"), (1, "Training"), (3, "Training"),
    (0, "PublicTest"), (6, "PrivateTest"), (5, "PrivateTest"),
]  # fmt: skip


def small_fer_csv(path: Path) -> Path:
    lines = [HEADER] + [
        f"{lab},{pixel_text(face(i))},{use}" for i, (lab, use) in enumerate(SMALL_ROWS)
    ]
    return write_lines(path, lines)


def write_reviewed(folder: Path, crops: list[tuple[str, str, str, np.ndarray]]) -> Path:
    """A review-stage output: (crop_id, emotion, original_emotion, RGB pixels) per crop."""
    rows = []
    for crop_id, emotion, original, pixels in crops:
        relative = f"{emotion}/{crop_id}.png"
        (folder / emotion).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / relative)
        decision = "keep" if emotion == original else "relabel"
        rows.append([crop_id, relative, emotion, LABEL_OF[emotion], original, decision,
                     crop_id.split("-")[0] * 4, "0.99"])  # fmt: skip
    with (folder / "reviewed.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["crop_id", "path", "emotion", "label", "original_emotion", "decision",
                         "source_sha256", "prob"])  # fmt: skip
        writer.writerows(rows)
    return folder


def solid(size: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.full((size, size, 3), rgb, np.uint8)


def crops(count: int) -> list[tuple[str, str, str, np.ndarray]]:
    """`count` crops: a few sizes, smaller and larger than 48, with one relabelled crop."""
    made = []
    for i in range(count):
        crop_id = f"{i:016x}-0{i % 3}"
        original = ("happy", "sad", "angry")[i % 3]
        emotion = "surprise" if i == 1 else original
        made.append((crop_id, emotion, original, solid(24 + 37 * i, (255, 0, 0))))
    return made


def run_merge(tmp_path: Path, name: str = "processed", **merge: object) -> tuple[Path, dict]:
    fer_csv = tmp_path / "fer2013.csv"
    if not fer_csv.exists():
        small_fer_csv(fer_csv)
    size = merge.pop("image_size", 48)
    merge.setdefault("duplicates", "keep")  # crops() are all one colour: near-duplicates
    out_dir = tmp_path / name
    metrics = merge_dataset(
        Fer2013Config(path=fer_csv, ferplus_mode="original"),  # FER+ in test_ferplus.py
        MergeConfig(**merge),
        image_size=size,
        reviewed_dir=tmp_path / "reviewed",
        out_dir=out_dir,
        metrics_path=tmp_path / f"{name}.json",
    )
    return out_dir, metrics


def read_index(out_dir: Path) -> list[dict[str, str]]:
    with (out_dir / "index.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# --- FER2013 CSV --------------------------------------------------------------------------------


def test_csv_rows_go_to_the_split_of_their_usage(tmp_path):
    path = small_fer_csv(tmp_path / "fer.csv")
    fer = read_fer2013(Fer2013Config(path=path, test_usage=("PublicTest",)))
    assert fer.skipped == 2  # the PrivateTest rows are in neither split
    assert fer.splits == ("train",) * 4 + ("test",)
    assert fer.labels.tolist() == [3, 4, 1, 3, 0]
    assert fer.names[0] == "fer-000002" and fer.origins[4] == "fer2013:line:6"
    assert fer.rows.tolist() == [0, 1, 2, 3, 4]  # data-row positions, for the FER+ votes
    for i, image in enumerate(fer.images):
        np.testing.assert_array_equal(image, face(i))


def bad_rows() -> list[tuple[str, str, str]]:
    """(case, text of line 5, the error after 'line 5: ')."""
    good = face(0).ravel().tolist()
    with_pixel = lambda token: " ".join([*map(str, good[:9]), token, *map(str, good[10:])])  # noqa: E731
    return [
        ("short", f"3,{' '.join(map(str, good[:-1]))},Training",
         "2303 pixel values (need 2304 = 48x48)"),
        ("256", f"3,{with_pixel('256')},Training", "pixel 10 is '256' (need an integer 0-255)"),
        ("negative", f"3,{with_pixel('-1')},Training", "pixel 10 is '-1' (need an integer 0-255)"),
        ("text", f"3,{with_pixel('abc')},Training", "pixel 10 is 'abc' (need an integer 0-255)"),
        ("float", f"3,{with_pixel('1.5')},Training", "pixel 10 is '1.5' (need an integer 0-255)"),
        ("label 7", f"7,{pixel_text(face(0))},Training", "emotion '7' is not a label 0-6"),
        ("label text", f"happy,{pixel_text(face(0))},Training",
         "emotion 'happy' is not a label 0-6"),
        ("usage", f"3,{pixel_text(face(0))},Validation",
         "Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
        ("fields", f"3,{pixel_text(face(0))},Training,extra",
         "4 fields (need 3, as in the header)"),
    ]  # fmt: skip


@pytest.mark.parametrize(("case", "line", "message"), bad_rows(), ids=[c for c, *_ in bad_rows()])
def test_a_bad_csv_row_is_named_by_its_line_number(tmp_path, case, line, message):
    lines = small_fer_csv(tmp_path / "fer.csv").read_text().splitlines()
    lines[4] = line
    path = write_lines(tmp_path / "fer.csv", lines)
    with pytest.raises(EmoganError) as error:
        read_fer2013(Fer2013Config(path=path))
    assert str(error.value) == f"{path} line 5: {message}"


def test_a_short_row_next_to_a_long_row_is_caught(tmp_path):
    """Together they hold the right number of values; each row must have it on its own."""
    lines = small_fer_csv(tmp_path / "fer.csv").read_text().splitlines()
    pixels = lines[3].split(",")[1].split()
    lines[3] = f"3,{' '.join(pixels[:-1])},Training"
    lines[4] = f"4,{' '.join(pixels + pixels[:1])},Training"
    path = write_lines(tmp_path / "fer.csv", lines)
    with pytest.raises(EmoganError, match=r"line 4: 2303 pixel values"):
        read_fer2013(Fer2013Config(path=path))


def test_line_numbers_count_blank_lines_and_later_chunks(tmp_path):
    zeros = " ".join(["0"] * 2304)
    lines = [HEADER, f"0,{zeros},Training", ""] + [f"0,{zeros},Training"] * (CHUNK_ROWS + 10)
    lines[CHUNK_ROWS + 5] = f"0,{zeros} 0,Training"  # file line CHUNK_ROWS + 6, second chunk
    path = write_lines(tmp_path / "fer.csv", lines)
    with pytest.raises(EmoganError, match=rf"line {CHUNK_ROWS + 6}: 2305 pixel values"):
        read_fer2013(Fer2013Config(path=path))
    del lines[CHUNK_ROWS + 5]
    lines += [""] * (2 * CHUNK_ROWS)  # trailing blank lines, a whole chunk of them
    fer = read_fer2013(Fer2013Config(path=write_lines(path, lines)))
    assert len(fer.images) == CHUNK_ROWS + 10  # the blank line is skipped
    assert fer.origins[:2] == ("fer2013:line:2", "fer2013:line:4")
    assert fer.rows.tolist() == list(range(CHUNK_ROWS + 10))  # FER+ positions skip blank lines


def test_csv_without_usage_is_all_training(tmp_path, caplog):
    path = write_lines(tmp_path / "train.csv", ["emotion,pixels", f"2,{pixel_text(face(1))}"])
    with caplog.at_level(logging.WARNING):
        fer = read_fer2013(Fer2013Config(path=path))
    assert fer.splits == ("train",) and fer.labels.tolist() == [2]
    assert "no Usage column" in caplog.text


def test_csv_without_pixels_column_is_refused(tmp_path):
    path = write_lines(tmp_path / "test.csv", ["emotion,Usage", "2,Training"])
    with pytest.raises(EmoganError, match=r"test.csv line 1: no 'pixels' column"):
        read_fer2013(Fer2013Config(path=path))


# --- FER2013 image folders ----------------------------------------------------------------------


def test_image_folders_are_read_as_gray_with_their_folder_split(tmp_path):
    root = tmp_path / "fer"
    for relative, image in [
        ("train/Happy/b.png", solid(60, (255, 0, 0))),
        ("train/sad/a.png", face(3)),
        ("test/NEUTRAL/c.png", face(4)),
    ]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative)
    (root / "train" / "sad" / ".DS_Store").write_bytes(b"\0")
    fer = read_fer2013(Fer2013Config(path=root))
    assert fer.origins == ("fer2013:test/NEUTRAL/c.png", "fer2013:train/Happy/b.png",
                           "fer2013:train/sad/a.png")  # fmt: skip
    assert fer.splits == ("test", "train", "train") and fer.labels.tolist() == [6, 3, 4]
    assert fer.names == ("fer-000001", "fer-000002", "fer-000003")
    assert fer.images[1].shape == (60, 60) and (fer.images[1] == RED_AS_GRAY).all()
    np.testing.assert_array_equal(fer.images[2], face(3))


@pytest.mark.parametrize(
    ("relative", "content", "message"),
    [
        ("train/joy/a.png", None, r"train/joy: not an emotion folder"),
        ("validation/sad/a.png", None, r"fer/validation: not a train or test folder"),
        ("train/sad/broken.png", b"not a png", r"broken.png: unreadable image"),
    ],
)
def test_a_bad_image_folder_is_named(tmp_path, relative, content, message):
    path = tmp_path / "fer" / relative
    path.parent.mkdir(parents=True)
    if content is None:
        Image.fromarray(face(0)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(EmoganError, match=message):
        read_fer2013(Fer2013Config(path=tmp_path / "fer"))


# --- merge --------------------------------------------------------------------------------------


def test_merge_without_custom_writes_fer_as_gray_pngs(tmp_path):
    out_dir, metrics = run_merge(tmp_path, include_custom=False)
    index = read_index(out_dir)
    on_disk = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png")}
    assert [row["path"] for row in index] == sorted(on_disk)
    assert metrics["train"]["fer2013"]["total"] == 4 and metrics["test"]["all"]["total"] == 3
    assert metrics["train"]["all"]["happy"] == 2 and metrics["all"]["custom"]["total"] == 0
    assert json.loads((tmp_path / "processed.json").read_text()) == metrics
    first = next(row for row in index if row["origin"] == "fer2013:line:2")
    assert first == {"path": "train/happy/fer-000002.png", "label": "3", "emotion": "happy",
                     "source": "fer2013", "split": "train", "origin": "fer2013:line:2"}  # fmt: skip
    np.testing.assert_array_equal(read_png(out_dir / first["path"]), face(0))


def test_merge_with_custom_crops_converts_them_to_gray(tmp_path):
    write_reviewed(tmp_path / "reviewed", crops(4))
    out_dir, metrics = run_merge(tmp_path, custom_test_fraction=0.0)
    custom = [row for row in read_index(out_dir) if row["source"] == "custom"]
    assert len(custom) == 4 and metrics["train"]["custom"]["total"] == 4
    relabelled = next(row for row in custom if row["origin"] == crops(4)[1][0])
    assert relabelled["path"] == f"train/surprise/custom-{crops(4)[1][0]}.png"
    assert metrics["all"]["all"]["total"] == len(SMALL_ROWS) + 4
    for row in custom:  # 24 px (enlarged) up to 135 px (shrunk) red squares
        image = read_png(out_dir / row["path"])
        assert image.shape == (48, 48) and (image == RED_AS_GRAY).all()


def test_custom_split_is_stable_when_crops_are_added(tmp_path):
    reviewed = tmp_path / "reviewed"
    write_reviewed(reviewed, crops(6)[:5])
    before = {row["origin"]: row["split"] for row in read_index(run_merge(tmp_path, "a")[0])}
    write_reviewed(reviewed, crops(6))
    after = {row["origin"]: row["split"] for row in read_index(run_merge(tmp_path, "b")[0])}
    assert len(after) == len(before) + 1 and before.items() <= after.items()
    test_share = np.mean([custom_split(f"{i:016x}-00", 0.15) == "test" for i in range(4000)])
    assert 0.13 < test_share < 0.17


@pytest.mark.parametrize(("size", "interpolation"), [(32, cv2.INTER_AREA), (64, cv2.INTER_CUBIC)])
def test_image_size_resizes_fer_and_crops(tmp_path, size, interpolation):
    write_reviewed(tmp_path / "reviewed", crops(3))
    out_dir, metrics = run_merge(tmp_path, image_size=size)
    index = read_index(out_dir)
    assert metrics["image_size"] == size
    assert all(read_png(out_dir / row["path"]).shape == (size, size) for row in index)
    first = next(row for row in index if row["origin"] == "fer2013:line:2")
    expected = cv2.resize(face(0), (size, size), interpolation=interpolation)
    np.testing.assert_array_equal(read_png(out_dir / first["path"]), expected)


def test_three_channels_keep_crop_colours_and_replicate_fer_gray(tmp_path):
    write_reviewed(tmp_path / "reviewed", crops(2))
    out_dir, metrics = run_merge(tmp_path, channels=3)
    index = read_index(out_dir)
    assert metrics["channels"] == 3
    for row in index:
        rgb = np.asarray(Image.open(out_dir / row["path"]))
        assert rgb.shape == (48, 48, 3)
        if row["source"] == "custom":
            assert (rgb == (255, 0, 0)).all()
        else:
            assert (rgb == rgb[..., :1]).all()


def test_merge_is_byte_identical_across_runs(tmp_path):
    write_reviewed(tmp_path / "reviewed", crops(3))
    first, _ = run_merge(tmp_path, "a")
    second, _ = run_merge(tmp_path, "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == len(SMALL_ROWS) + 3 + 2  # images + index.csv + duplicates.csv
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: (d / "happy" / "0000000000000000-00.png").unlink(), r"line 2: .* not found"),
        (lambda d: (d / "reviewed.csv").write_text("crop_id,path,emotion,label\nx,p,happy,4\n"),
         r"line 2: label '4' does not match emotion 'happy'"),
        (lambda d: (d / "reviewed.csv").write_text("crop_id,path,emotion,label\n../x,p,happy,3\n"),
         r"line 2: crop_id '../x' is not a plain file-name-safe id"),
        (lambda d: (d / "reviewed.csv").unlink(), r"reviewed.csv: not found"),
    ],
)  # fmt: skip
def test_bad_reviewed_input_fails_and_keeps_the_previous_output(tmp_path, break_it, message):
    write_reviewed(tmp_path / "reviewed", crops(2))
    out_dir, _ = run_merge(tmp_path)
    index_before = (out_dir / "index.csv").read_bytes()
    break_it(tmp_path / "reviewed")
    with pytest.raises(EmoganError, match=message):
        run_merge(tmp_path)
    assert (out_dir / "index.csv").read_bytes() == index_before


def test_duplicate_crop_ids_are_refused(tmp_path):
    reviewed = write_reviewed(tmp_path / "reviewed", crops(1))
    lines = (reviewed / "reviewed.csv").read_text().splitlines()
    write_lines(reviewed / "reviewed.csv", [*lines, lines[1]])
    with pytest.raises(EmoganError, match=r"line 3: crop_id 0000000000000000-00 appears twice"):
        run_merge(tmp_path)


def test_bench_merge_writes_fer2013_shaped_csv(tmp_path):
    result = bench_merge(tmp_path, rows=300)
    dropped = json.loads((tmp_path / "dataset.json").read_text())["ferplus"]["dropped"]
    assert result["rows"] == 300 and 0 < dropped["all"]["no_majority"] < 300 * 0.2
    written = result["images_written"] + result["duplicates"]["dropped"]
    assert written == 300 - dropped["all"]["total"]
    # 2 % of the rows are planted copies; a pair FER+ broke up cannot be found
    assert 0 < result["duplicates"]["planted_pairs"] <= 6
    assert result["duplicates"]["recall"] == 1.0
    fer = read_fer2013(Fer2013Config(path=tmp_path / "fer2013.csv"))
    assert fer.splits.count("train") == 240  # 28,709 of 35,887 rows are Training
    assert set(fer.labels.tolist()) == set(range(7))
