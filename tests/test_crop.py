"""The crop stage on real photographs: matplotlib's public-domain portrait of Grace Hopper."""

import csv
import json
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from emogan.config import AlignTemplate, load_params
from emogan.data.collect import collect_images
from emogan.data.crop import crop_faces
from emogan.data.framing import FaceFrame
from emogan.data.landmarks import LANDMARKS
from emogan.data.simulated_review import box_iou

ROOT = Path(__file__).resolve().parents[1]
HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
TEMPLATE = AlignTemplate()
HOPPER_FACE = (174.0, 120.0, 356.0, 340.0)  # MTCNN's box on the original 512 x 600 photo
# (scale, mirrored, x, y) of each copy pasted into one group photo
COPIES = [
    (1.0, False, 20, 20),
    (0.6, True, 600, 40),
    (0.35, False, 1000, 60),
    (0.45, True, 1000, 500),
]


def _params(**crop: object):
    params = load_params(ROOT / "params.yaml")
    return params.model_copy(
        update={"crop": params.crop.model_copy(update={"device": "cpu", **crop})}
    )


def _group_photo() -> tuple[Image.Image, list[tuple[float, ...]]]:
    hopper = Image.open(HOPPER)
    canvas = Image.new("RGB", (1500, 1000), (90, 110, 100))
    faces = []
    for scale, mirrored, x, y in COPIES:
        copy = hopper.resize((round(512 * scale), round(600 * scale)), Image.Resampling.LANCZOS)
        x1, y1, x2, y2 = HOPPER_FACE
        if mirrored:
            copy = copy.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x1, x2 = 512 - x2, 512 - x1
        canvas.paste(copy, (x, y))
        faces.append((x + x1 * scale, y + y1 * scale, x + x2 * scale, y + y2 * scale))
    return canvas, faces


def _collect(tmp_path: Path, photos: dict[str, Image.Image], **save: object) -> Path:
    """Run the real collect stage over a from_dir folder of `photos` (name -> image)."""
    folder = tmp_path / "photos"
    for name, image in photos.items():
        (folder / "happy").mkdir(parents=True, exist_ok=True)
        image.save(folder / "happy" / name, **save.get(name, {}))
    params = _params()
    collect_cfg = params.collect.model_copy(update={"from_dir": folder, "manifest": None})
    collect_images(collect_cfg, tmp_path / "raw", tmp_path / "collect.json")
    return tmp_path / "raw"


def _crops(out: Path) -> list[dict[str, str]]:
    with (out / "crops.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_every_face_of_a_group_photo_is_cropped(tmp_path: Path) -> None:
    photo, faces = _group_photo()
    raw = _collect(tmp_path, {"group.jpg": photo})
    out = tmp_path / "crops"
    metrics = crop_faces(_params().crop, raw, out, tmp_path / "crop.json")

    rows = _crops(out)
    assert len(rows) == len(COPIES) == metrics["faces"]
    for face in faces:
        boxes = [tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2")) for row in rows]
        assert max(box_iou(face, box) for box in boxes) > 0.6, face
    template = np.array([getattr(TEMPLATE, name) for name in AlignTemplate.model_fields])
    for row in rows:
        crop = Image.open(out / row["path"])
        assert crop.size == (int(row["crop_side"]),) * 2
        assert float(row["prob"]) >= 0.9 and row["emotion"] == "happy"
        # The recorded transform traces the crop back: it takes the face's eyes and nose in the
        # photo to the template's places in the crop (within 2 px at 48 px).
        frame = _frame(row)
        landmarks = np.array([[float(row[f"{n}_{a}"]) for a in "xy"] for n in LANDMARKS])
        assert np.abs(frame.to_crop(landmarks[:3]) / frame.side - template).max() * 48 < 2
    assert json.loads((tmp_path / "crop.json").read_text()) == metrics


def test_align_false_keeps_the_square_around_the_box(tmp_path: Path) -> None:
    photo, _ = _group_photo()
    raw = _collect(tmp_path, {"group.png": photo})
    out = tmp_path / "crops"
    crop_faces(_params(align=False).crop, raw, out, tmp_path / "crop.json")
    pixels = np.asarray(photo)
    for row in _crops(out):
        x1, y1, x2, y2 = (float(row[key]) for key in ("x1", "y1", "x2", "y2"))
        frame = _frame(row)
        side, x, y = frame.side, round(-frame.tx), round(-frame.ty)
        assert (frame.a, frame.b) == (1.0, 0.0)
        assert side == round(max(x2 - x1, y2 - y1) * 1.4)  # margin 0.2 on each side
        assert abs(x + side / 2 - (x1 + x2) / 2) <= 1 and abs(y + side / 2 - (y1 + y2) / 2) <= 1
        crop = np.asarray(Image.open(out / row["path"]))
        assert np.array_equal(crop, pixels[y : y + side, x : x + side])


def _frame(row: dict[str, str]) -> FaceFrame:
    a, b, tx, ty = (float(row[f"crop_{key}"]) for key in ("a", "b", "tx", "ty"))
    return FaceFrame(a, b, tx, ty, int(row["crop_side"]))


def test_crop_ids_survive_a_stricter_rerun(tmp_path: Path) -> None:
    photo, _ = _group_photo()
    raw = _collect(tmp_path, {"group.jpg": photo})
    loose = crop_faces(_params().crop, raw, tmp_path / "a", tmp_path / "a.json")
    strict = crop_faces(_params(min_size=100).crop, raw, tmp_path / "b", tmp_path / "b.json")
    ids_loose = {row["crop_id"]: row["x1"] for row in _crops(tmp_path / "a")}
    ids_strict = {row["crop_id"]: row["x1"] for row in _crops(tmp_path / "b")}
    assert strict["faces"] < loose["faces"]
    assert strict["rejected_too_small"] == loose["faces"] - strict["faces"]
    assert ids_strict.items() <= ids_loose.items()


def test_odd_modes_are_read_and_faceless_photos_counted(tmp_path: Path) -> None:
    hopper = Image.open(HOPPER)
    wide = (np.asarray(hopper.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    rgba = hopper.convert("RGBA")
    rgba.putalpha(Image.new("L", hopper.size, 255).point(lambda v: v))
    photos = {
        "gray.png": hopper.convert("L"),
        "cmyk.jpg": hopper.convert("CMYK"),
        "alpha.png": rgba,
        "sixteen.png": Image.fromarray(wide),
        "tiny.png": hopper.resize((9, 11)),
        "blank.png": Image.new("RGB", (300, 200), (200, 40, 40)),
    }
    raw = _collect(tmp_path, photos)
    metrics = crop_faces(_params().crop, raw, tmp_path / "crops", tmp_path / "crop.json")
    assert metrics["images"] == 6
    assert metrics["faces"] == 4
    assert metrics["images_without_faces"] == 1
    assert metrics["images_too_small"] == 1
    for row in _crops(tmp_path / "crops"):
        pixels = np.asarray(Image.open(tmp_path / "crops" / row["path"]))
        assert pixels.shape[2] == 3 and 60 < pixels.mean() < 200  # not clipped white or black


def test_a_missing_raw_folder_says_which_stage_to_run(tmp_path: Path) -> None:
    from emogan.errors import EmoganError

    with pytest.raises(EmoganError, match=r"raw/manifest.csv: not found \(run the collect stage"):
        crop_faces(_params().crop, tmp_path / "raw", tmp_path / "crops", tmp_path / "crop.json")
