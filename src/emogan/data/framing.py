"""How a face is framed: the transform from a photo to the square crop that shows one face.

Two framings, one representation. Aligned (crop.align): the similarity (rotation, uniform
scale, shift) that turns MTCNN's eye landmarks level and puts the eyes and nose as close as
least squares can to the template, where the FER-format faces have them, so that every face
fills the frame as FER2013's do. Square (crop.align: false): the square around MTCNN's box
grown by a margin, a pure shift. Both are a `FaceFrame`, which maps photo pixels to crop pixels
and back, so the crop stage and `emogan translate` (cutting out and pasting back) share one
rule, and crops.csv records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from facenet_pytorch import MTCNN

from emogan.config import AlignTemplate, CropConfig
from emogan.data.detect import DetectedFace, detect_faces
from emogan.data.landmarks import LANDMARKS

MIN_SIDE = 8  # px: a smaller aligned crop holds no face worth keeping
REFINE_SIDE = 192  # px: the view in which an aligned face is detected a second time


@dataclass(frozen=True)
class FaceFrame:
    """The crop as the similarity x' = a*x - b*y + tx, y' = b*x + a*y + ty from photo pixels to
    crop pixels, and the crop's side: the crop is [0, side) x [0, side) in the mapped plane."""

    a: float
    b: float
    tx: float
    ty: float
    side: int

    @property
    def matrix(self) -> np.ndarray:
        """2 x 3, photo -> crop, as cv2.warpAffine takes it."""
        return np.array([[self.a, -self.b, self.tx], [self.b, self.a, self.ty]])

    @property
    def inverse(self) -> np.ndarray:
        """2 x 3, crop -> photo."""
        return cv2.invertAffineTransform(self.matrix)

    @property
    def rotation(self) -> float:
        """Degrees the photo is turned (clockwise as seen) to make the face upright."""
        return float(np.degrees(np.arctan2(self.b, self.a)))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """N x 2 photo points -> crop points."""
        return np.asarray(points, np.float64) @ self.matrix[:, :2].T + self.matrix[:, 2]

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """N x 2 crop points -> photo points."""
        return np.asarray(points, np.float64) @ self.inverse[:, :2].T + self.inverse[:, 2]

    def corners(self) -> np.ndarray:
        """4 x 2: the crop's corners in the photo, clockwise from top left."""
        return self.to_photo([[0, 0], [self.side, 0], [self.side, self.side], [0, self.side]])


def square_frame(face: DetectedFace, margin: float, width: int, height: int) -> FaceFrame:
    """The square centred on the face's box, grown by `margin` on each side, then shrunk and
    shifted as little as needed to lie inside the photo (width x height)."""
    side = max(face.x2 - face.x1, face.y2 - face.y1) * (1 + 2 * margin)
    side = int(round(min(side, width, height)))
    cx, cy = (face.x1 + face.x2) / 2, (face.y1 + face.y2) / 2
    x = int(round(min(max(cx - side / 2, 0), width - side)))
    y = int(round(min(max(cy - side / 2, 0), height - side)))
    return FaceFrame(1.0, 0.0, float(-x), float(-y), side)


def frame_faces(
    detector: MTCNN, rgb: np.ndarray, faces: Sequence[DetectedFace], crop: CropConfig
) -> list[FaceFrame]:
    """Each face's frame as the crop stage cuts it from the photo (H x W x 3 uint8): aligned,
    or with crop.align false the square around its box.

    Alignment takes two passes. MTCNN reads a tilted face's landmarks less exactly (Grace
    Hopper's portrait turned by 15 degrees came out turned by 8), so each face is turned upright
    by its first frame, detected again there, and framed by those landmarks mapped back to the
    photo (15.1 degrees). Where the second look finds no face, the first frame stands."""
    height, width = rgb.shape[:2]
    if not crop.align:
        return [square_frame(face, crop.margin, width, height) for face in faces]
    first = [aligned_frame(face.landmarks, crop.template) for face in faces]
    views = [context_view(frame) for frame in first]
    again = detect_faces(detector, [cut_out(rgb, view) for view in views])
    frames = []
    for frame, view, found in zip(first, views, again, strict=True):
        middle = [face for face in found if _holds(face.box, REFINE_SIDE / 2)]
        if not middle:
            frames.append(frame)
            continue
        best = max(middle, key=lambda face: face.prob)
        frames.append(aligned_frame(view.to_photo(best.landmarks), crop.template))
    return frames


def context_view(frame: FaceFrame) -> FaceFrame:
    """A REFINE_SIDE square view with `frame` in its middle half: the whole head shows, and
    every view has one size, so MTCNN takes them in one batch."""
    k = REFINE_SIDE / (2 * frame.side)
    shift = REFINE_SIDE / 4
    return FaceFrame(frame.a * k, frame.b * k, frame.tx * k + shift, frame.ty * k + shift,
                     REFINE_SIDE)  # fmt: skip


def _holds(box: tuple[float, float, float, float], point: float) -> bool:
    x1, y1, x2, y2 = box
    return x1 <= point <= x2 and y1 <= point <= y2


def aligned_frame(landmarks: np.ndarray, template: AlignTemplate) -> FaceFrame:
    """The similarity that turns the face's eyes (of its five landmarks, 5 x 2 in LANDMARKS
    order) level with the template's, then scales and shifts its eyes and nose as close as least
    squares can to the template (shares of the frame's side). The side is the face's own size in
    the photo, so the crop is neither enlarged nor shrunk: the merge stage resizes it once, as
    it does every face."""
    names = tuple(AlignTemplate.model_fields)
    source = np.asarray(landmarks, np.float64)[[LANDMARKS.index(name) for name in names]]
    target = np.array([getattr(template, name) for name in names], np.float64)
    a, b, tx, ty = _similarity(source, target)
    side = max(int(round(1.0 / np.hypot(a, b))), MIN_SIDE)
    return FaceFrame(a * side, b * side, tx * side, ty * side, side)


def _similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, float, float, float]:
    """(a, b, tx, ty) of z' = m z + t, points as complex numbers, m = a + ib: the rotation takes
    the first two points' line (the eyes) onto the target's exactly, since a tilt read from
    the nose would be a turned head, not a tilted one; the scale and shift are then the least
    squares fit over all the points."""
    src = source[:, 0] + 1j * source[:, 1]
    dst = target[:, 0] + 1j * target[:, 1]
    if src[1] == src[0]:
        raise ValueError("the eyes lie on one point")
    turn = (dst[1] - dst[0]) / (src[1] - src[0])
    turned = src * turn / abs(turn)
    centred, aim = turned - turned.mean(), dst - dst.mean()
    scale = float(np.sum((np.conj(centred) * aim).real) / np.sum(np.abs(centred) ** 2))
    m = scale * turn / abs(turn)
    t = dst.mean() - m * src.mean()
    return float(m.real), float(m.imag), float(t.real), float(t.imag)


def cut_out(rgb: np.ndarray, frame: FaceFrame) -> np.ndarray:
    """The crop's pixels (side x side x C). Outside the photo the edge pixels are repeated, so a
    face near a border gets no hard black edge."""
    return cv2.warpAffine(
        rgb, frame.matrix, (frame.side, frame.side),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def paste_back(
    photo: np.ndarray, frame: FaceFrame, face: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """The photo (H x W x C float) with `face` (side x side x C, in crop pixels) blended in where
    the crop came from, by `weight` (side x side in [0, 1]); pixels the crop does not cover are
    left exactly as they were. Works on the crop's bounding box only, so a large photo costs no
    more than its face."""
    height, width = photo.shape[:2]
    corners = frame.corners()
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [width, height])
    if x0 >= x1 or y0 >= y1:
        return photo
    to_box = frame.inverse - np.array([[0, 0, x0], [0, 0, y0]])
    size = (int(x1 - x0), int(y1 - y0))
    warp = {"flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    placed = cv2.warpAffine(face.astype(np.float32), to_box, size, **warp)
    alpha = cv2.warpAffine(weight.astype(np.float32), to_box, size, **warp)
    placed = placed.reshape(size[1], size[0], -1)
    alpha = alpha[..., None]
    out = photo.copy()
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = region * (1.0 - alpha) + placed * alpha
    return out
