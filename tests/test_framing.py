"""Framing a face: the aligned similarity on drawn points and on a real, turned portrait
(matplotlib's public-domain Grace Hopper), the square of crop.align false, and pasting back."""

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from emogan.config import AlignTemplate, CropConfig
from emogan.data.detect import DetectedFace, detect_faces, load_detector
from emogan.data.framing import (
    REFINE_SIDE,
    FaceFrame,
    aligned_frame,
    context_view,
    cut_out,
    frame_faces,
    paste_back,
    square_frame,
)
from emogan.data.landmarks import LANDMARKS

HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
TEMPLATE = AlignTemplate()
FIT = np.array([getattr(TEMPLATE, name) for name in AlignTemplate.model_fields])


def _turn(points: np.ndarray, degrees: float, scale: float, shift: tuple[float, float]):
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ (scale * rotation).T + shift


def test_template_fields_are_named_landmarks() -> None:
    assert set(AlignTemplate.model_fields) <= set(LANDMARKS)


@pytest.mark.parametrize("degrees", [0.0, 17.0, -35.0, 90.0])
def test_a_turned_and_scaled_face_is_framed_upright_at_its_own_size(degrees: float) -> None:
    # The template's eyes and nose drawn 130 px wide, turned and moved; mouth corners far off
    # (a wide smile) must not move the frame.
    face = np.vstack([FIT, [[0.2, 1.0], [0.8, 1.0]]])
    landmarks = _turn(face, degrees, 130.0, (400.0, 250.0))
    frame = aligned_frame(landmarks, TEMPLATE)

    assert frame.side == 130
    assert frame.rotation == pytest.approx(-degrees, abs=1e-6)
    assert frame.to_crop(landmarks[:3]) / frame.side == pytest.approx(FIT, abs=1e-6)
    assert frame.to_photo(frame.to_crop(landmarks)) == pytest.approx(landmarks)


def test_the_eyes_come_out_level_even_where_the_nose_is_off_centre() -> None:
    turned_head = np.array(FIT) + [[0, 0], [0, 0], [0.06, 0.0]]  # the nose moves with a turn
    landmarks = _turn(turned_head, 20.0, 90.0, (100.0, 80.0))
    eyes = aligned_frame(landmarks, TEMPLATE).to_crop(landmarks[:2])
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-9)


def test_the_square_of_align_false_is_todays_crop() -> None:
    face = DetectedFace(100.0, 50.0, 160.0, 130.0, 0.99, np.zeros((5, 2)))
    frame = square_frame(face, 0.2, 640, 480)
    side = round(80 * 1.4)
    assert (frame.a, frame.b, frame.side) == (1.0, 0.0, side)
    assert (-frame.tx, -frame.ty) == (round(130 - side / 2), round(90 - side / 2))
    at_edge = square_frame(
        DetectedFace(0.0, 0.0, 60.0, 60.0, 0.99, np.zeros((5, 2))), 0.2, 640, 480
    )
    assert (at_edge.tx, at_edge.ty) == (0.0, 0.0)  # shifted inside the photo

    photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x, y = int(-frame.tx), int(-frame.ty)
    assert np.array_equal(cut_out(photo, frame), photo[y : y + side, x : x + side])


def test_paste_back_undoes_cut_out_and_touches_nothing_else() -> None:
    photo = np.random.default_rng(1).uniform(0, 255, (300, 400, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(photo.astype(np.uint8)).resize((40, 30)).resize((400, 300)))
    frame = aligned_frame(_turn(FIT, 30.0, 100.0, (200.0, 150.0)), TEMPLATE)
    crop = cut_out(smooth, frame).astype(np.float32)

    marked = paste_back(
        smooth.astype(np.float32), frame, np.full_like(crop, 255.0), np.ones(crop.shape[:2])
    )
    changed = (marked != smooth).any(axis=-1)
    rows, cols = np.nonzero(changed)
    corners = frame.corners()
    assert cols.min() >= np.floor(corners[:, 0].min()) and cols.max() <= np.ceil(
        corners[:, 0].max()
    )
    assert rows.min() >= np.floor(corners[:, 1].min()) and rows.max() <= np.ceil(
        corners[:, 1].max()
    )
    centre = frame.to_photo([[frame.side / 2, frame.side / 2]])[0].round().astype(int)
    assert (marked[centre[1], centre[0]] == 255).all()

    back = paste_back(smooth.astype(np.float32), frame, crop, np.ones(crop.shape[:2]))
    inside = frame.to_photo(np.argwhere(np.ones((5, 5))) * frame.side / 6 + frame.side / 6)
    for x, y in inside.round().astype(int):  # away from the crop's edges, a round trip
        assert np.abs(back[y, x] - smooth[y, x]).max() < 6


@pytest.fixture(scope="module")
def detector():
    return load_detector("cpu")


def _hopper(degrees: float) -> np.ndarray:
    turned = Image.open(HOPPER).rotate(
        degrees, expand=True, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128)
    )
    return np.asarray(turned)


def _aligned(detector, rgb: np.ndarray) -> FaceFrame:
    face = max(detect_faces(detector, [rgb])[0], key=lambda face: face.prob)
    return frame_faces(detector, rgb, [face], CropConfig())[0]


def test_a_real_face_turned_by_a_known_angle_comes_out_upright(detector) -> None:
    upright = _aligned(detector, _hopper(0.0))
    for degrees in (15.0, -25.0, 40.0):
        rgb = _hopper(degrees)
        frame = _aligned(detector, rgb)
        # PIL turns counter-clockwise as seen; the frame turns it back.
        assert frame.rotation - upright.rotation == pytest.approx(degrees, abs=2.0)
        # A fresh look at the aligned face: eyes level within 2 degrees, and the eyes and nose
        # within 2 px of the template at 48 px.
        view = context_view(frame)
        again = max(detect_faces(detector, [cut_out(rgb, view)])[0], key=lambda face: face.prob)
        points = (again.landmarks - REFINE_SIDE / 4) / (REFINE_SIDE / 2)
        eyes = np.degrees(np.arctan2(*(points[1] - points[0])[::-1]))
        assert abs(eyes) < 2.0, degrees
        assert np.abs(points[:3] - FIT).max() * 48 < 2.0, degrees
