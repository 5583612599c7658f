"""`emogan bench template`: where MTCNN finds the eyes and nose on the FER-format faces, the
measurement behind crop.template.

Each face is enlarged (MTCNN's smallest face is 20 px and its landmarks are coarse on 48 px
faces) and padded by repeating its edges (a face that fills the frame has no forehead or chin
for the detector to see otherwise); the landmarks are mapped back to shares of the frame and
averaged over the faces MTCNN finds, overall and per emotion. The mouth corners are reported
too: they show why the template leaves them out (they move with the expression).
"""

import cv2
import numpy as np

from emogan.config import Fer2013Config
from emogan.data.detect import detect_faces, load_detector
from emogan.data.fer2013 import read_fer2013
from emogan.data.landmarks import LANDMARKS
from emogan.emotions import EMOTIONS

ENLARGE = 4
PAD = 0.25  # of the enlarged side, on each side


def bench_template(cfg: Fer2013Config, per_emotion: int, seed: int = 0) -> dict:
    """The mean landmarks of up to `per_emotion` training faces of each emotion."""
    fer = read_fer2013(cfg)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in range(len(EMOTIONS)):
        rows = np.flatnonzero((fer.labels == label) & (np.array(fer.splits) == "train"))
        chosen += rng.permutation(rows)[:per_emotion].tolist()
    views = [_view(fer.images[row]) for row in chosen]
    found = detect_faces(load_detector("cpu"), [view for view, _ in views], batch_size=32)
    points, labels = [], []
    for row, (_, side), faces in zip(chosen, views, found, strict=True):
        if faces:
            best = max(faces, key=lambda face: face.prob)
            points.append((best.landmarks - side * PAD) / side)
            labels.append(int(fer.labels[row]))
    points_array, labels_array = np.array(points), np.array(labels)
    return {
        "fer2013": str(cfg.path),
        "faces": len(chosen),
        "found": len(points),
        "template": _named(points_array.mean(axis=0)),
        "spread": _named(points_array.std(axis=0)),
        "per_emotion": {
            EMOTIONS[label]: _named(points_array[labels_array == label].mean(axis=0))
            for label in sorted(set(labels))
        },
    }


def _view(gray: np.ndarray) -> tuple[np.ndarray, int]:
    """The face enlarged and padded, as RGB, and its enlarged side."""
    side = gray.shape[0] * ENLARGE
    big = cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)
    pad = round(side * PAD)
    padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return cv2.cvtColor(padded, cv2.COLOR_GRAY2RGB), side


def _named(points: np.ndarray) -> dict[str, list[float]]:
    return {
        name: [round(float(v), 3) for v in point]
        for name, point in zip(LANDMARKS, points, strict=True)
    }
