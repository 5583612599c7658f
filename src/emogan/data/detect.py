"""MTCNN face detection (facenet-pytorch), shared by the crop stage and the demo benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch import MTCNN

from emogan.data.landmarks import LANDMARKS  # noqa: F401 (the order of `landmarks` below)


@dataclass(frozen=True)
class DetectedFace:
    x1: float
    y1: float
    x2: float
    y2: float
    prob: float
    landmarks: np.ndarray  # 5 x 2 (x, y), in LANDMARKS order

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2


def load_detector(device: str = "cpu", min_face_size: int = 20) -> MTCNN:
    """MTCNN that returns every face; its weights ship inside facenet-pytorch (no download)."""
    return MTCNN(keep_all=True, min_face_size=min_face_size, device=torch.device(device))


def detect_faces(
    detector: MTCNN, images: list[np.ndarray], batch_size: int = 8
) -> list[list[DetectedFace]]:
    """Faces in each RGB uint8 image, most probable first. Equal-shape neighbours share a batch."""
    found: list[list[DetectedFace]] = []
    start = 0
    while start < len(images):
        end = start + 1
        while (
            end < min(start + batch_size, len(images)) and images[end].shape == images[start].shape
        ):
            end += 1
        found += _detect_batch(detector, np.stack(images[start:end]))
        start = end
    return found


def _detect_batch(detector: MTCNN, batch: np.ndarray) -> list[list[DetectedFace]]:
    # A 4-d array makes facenet-pytorch answer per image; an image without faces comes back as
    # None (boxes, landmarks) and [None] (probs), the rest as arrays, often inside object arrays.
    boxes, probs, points = detector.detect(batch, landmarks=True)
    return [_faces(b, p, pts) for b, p, pts in zip(boxes, probs, points, strict=True)]


def _faces(boxes: object, probs: object, points: object) -> list[DetectedFace]:
    if boxes is None:
        return []
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    return [
        DetectedFace(*box.tolist(), prob=float(prob), landmarks=landmarks)
        for box, prob, landmarks in zip(boxes, probs, points, strict=True)
    ]
