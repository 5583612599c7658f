"""Near-duplicates as the web makes them, planted in the demo world and the merge benchmark so
that duplicate detection can be measured: the same face re-encoded, resized, slightly cropped
or brightened."""

import cv2
import numpy as np

ALTERATIONS = ("jpeg", "resize", "crop", "brighten")


def alter(gray: np.ndarray, alteration: str, rng: np.random.Generator) -> np.ndarray:
    """A near-duplicate of an H x W uint8 gray face, the same size."""
    height, width = gray.shape
    if alteration == "jpeg":
        quality = int(rng.integers(40, 80))
        _, jpeg = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    if alteration == "resize":  # shrunk to 50-80 % and enlarged back, as a thumbnail is
        side = int(round(height * rng.uniform(0.5, 0.8)))
        small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    if alteration == "crop":  # 1/24 of the side (2 px of 48) cut off, the rest enlarged back
        cut = max(1, height // 24)
        top, left = (int(v) for v in rng.integers(0, cut + 1, 2))
        kept = gray[top : top + height - cut, left : left + width - cut]
        return cv2.resize(kept, (width, height), interpolation=cv2.INTER_CUBIC)
    if alteration == "brighten":
        brighter = gray.astype(np.float32) * rng.uniform(1.1, 1.25) + rng.uniform(5, 15)
        return np.clip(np.round(brighter), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown alteration {alteration!r}; use {', '.join(ALTERATIONS)}")
