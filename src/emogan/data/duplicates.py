"""Near-duplicate faces: candidates by a coarse look, kept when the two faces still match once
one is registered onto the other; then their groups.

1. Candidates: each face's NEIGHBOURS nearest faces by the cosine of their centred
   DESCRIPTOR_SIDE x DESCRIPTOR_SIDE means, a look so coarse that a shift of a pixel or two
   barely changes it.
2. Verification: ECC (cv2.findTransformECC) fits an affine map of one face onto the other, and
   the pair is a near-duplicate when the registered faces' MATCH_SIDE x MATCH_SIDE means
   correlate at least merge.duplicate_similarity. The registration undoes crops, resizing and
   MTCNN's re-framing; what is left between two people of one expression is their
   low-frequency appearance (shading, skin, light), which a copy keeps. Pixels clipped to black
   or white in either face are left out of the means: a brightened copy loses its highlights'
   shape there, which would otherwise cost it the match.

Why not a perceptual hash (measured in BENCHMARKS.md, near-duplicates): a 2-px crop, a photo
listed again smaller or a web photo re-framed by MTCNN moves the features by a pixel or more,
which flips as many of a dhash's bits as separate unrelated faces of one expression.
"""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

DESCRIPTOR_SIDE = 8
NEIGHBOURS = 2  # candidates per face; a face and its copy are each other's nearest or next
MATCH_SIDE = 6
REGISTER_SIDE = 32  # larger faces are shrunk to it first: ECC's cost grows with the pixels,
# and a registration at 32 px is already finer than the MATCH_SIDE cells need
CLIPPED = 5  # grey levels from black or white: such a pixel may have lost its true value
MIN_CELL_SHARE = 0.25  # of a cell's pixels unclipped in both faces, for the cell to count
MIN_CELLS = MATCH_SIDE**2 // 3
CHUNK_ROWS = 1024  # rows of the cosine matrix at once: 1024 x 36k float32 = 147 MB
# 20 steps: copies are aligned long before, and more steps only polish unrelated pairs (3x
# slower, no pair's verdict changed on the demo or the merge benchmark)
ECC_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 1e-3)
# OpenCV releases the GIL inside findTransformECC: one thread per core (2 cores, idle machine:
# 0.85 ms a pair with 1 thread, 0.44 with 2, 0.50 with 4, which only contend)
THREADS = os.cpu_count() or 1
DUPLICATE_COLUMNS = (
    "group", "path", "source", "split", "origin", "similarity", "crowd", "dropped",
)  # fmt: skip


@dataclass(frozen=True)
class DuplicateGroups:
    """Faces linked by verified pairs, directly or through a chain of them."""

    members: list[list[int]]  # indices into the faces, each list sorted, >= 2 per group
    similarity: np.ndarray  # per face: its highest verified similarity to another (nan: none)


def descriptors(faces: Sequence[np.ndarray]) -> np.ndarray:
    """N x DESCRIPTOR_SIDE**2 unit vectors: each gray face's centred coarse means."""
    if not faces:
        return np.zeros((0, DESCRIPTOR_SIDE**2), np.float32)
    return _unit_rows(np.stack([_means(face, DESCRIPTOR_SIDE) for face in faces]))


def candidate_pairs(described: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Every pair (i < j, sorted, once) in which one face is among the other's `neighbours`
    nearest by cosine."""
    count = len(described)
    neighbours = min(neighbours, count - 1)
    if neighbours < 1:
        return np.zeros((0, 2), np.int64)
    found = []
    for start in range(0, count, CHUNK_ROWS):
        cosine = described[start : start + CHUNK_ROWS] @ described.T
        rows = np.arange(len(cosine))
        cosine[rows, rows + start] = -np.inf  # not a face with itself
        for _ in range(neighbours):  # a few argmax passes beat a partition of every row
            nearest = cosine.argmax(axis=1)
            found.append(np.stack([rows + start, nearest], axis=1))
            cosine[rows, nearest] = -np.inf
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0).astype(np.int64)


def aligned_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two gray faces of one size look once b is registered onto a: the correlation
    of their coarse means over the pixels unclipped in both, border left out (the warp fills
    it); -1 when ECC cannot align them or too little is left unclipped."""
    if np.array_equal(a, b):
        return 1.0  # also for flat faces, which ECC cannot align
    a32, b32 = (_shrunk(face.astype(np.float32), REGISTER_SIDE) for face in (a, b))
    try:
        _, warp = cv2.findTransformECC(
            a32, b32, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, ECC_CRITERIA, None, 1
        )
    except cv2.error:  # no convergence, or a flat face
        return -1.0
    height, width = a32.shape
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    registered = cv2.warpAffine(b32, warp, (width, height), flags=flags,
                                borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    cut = max(1, height // 16)
    a32, registered = a32[cut:-cut, cut:-cut], registered[cut:-cut, cut:-cut]
    unclipped = ((a32 >= CLIPPED) & (a32 <= 255 - CLIPPED)).astype(np.float32)
    unclipped *= (registered >= CLIPPED) & (registered <= 255 - CLIPPED)
    share = _means(unclipped, MATCH_SIDE)
    counted = share >= MIN_CELL_SHARE
    if counted.sum() < MIN_CELLS:
        return -1.0
    means = [_means(face * unclipped, MATCH_SIDE)[counted] for face in (a32, registered)]
    first, second = _unit_rows(np.stack(means) / share[counted])
    return float(first @ second)


def group_near_duplicates(faces: Sequence[np.ndarray], min_similarity: float) -> DuplicateGroups:
    """Group the gray faces (one size) linked by verified pairs, by union-find: a chain of
    near-duplicate pairs is one group."""
    pairs = candidate_pairs(descriptors(faces))
    with ThreadPoolExecutor(THREADS) as pool:
        scores = list(pool.map(lambda p: aligned_similarity(faces[p[0]], faces[p[1]]), pairs))
    similarity = np.full(len(faces), np.nan)
    parent = list(range(len(faces)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (i, j), score in zip(pairs.tolist(), scores, strict=True):
        if score < min_similarity:
            continue
        similarity[[i, j]] = np.fmax(similarity[[i, j]], score)
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    by_root: dict[int, list[int]] = {}
    for i in range(len(faces)):
        by_root.setdefault(root(i), []).append(i)
    members = sorted((group for group in by_root.values() if len(group) > 1), key=lambda g: g[0])
    return DuplicateGroups(members, similarity)


def dropped_faces(
    groups: DuplicateGroups,
    splits: Sequence[str],
    sources: Sequence[str],
    policy: str,
    max_group: int,
) -> set[int]:
    """The faces merge leaves out under merge.duplicates (faces are indexed in path order);
    groups of more than max_group faces are crowds of look-alikes and keep every face.

    drop_cross_split: the test members of every group that has a train member. drop_all: all
    but one member per group, the one kept being a train face if any (train is what the models
    learn from, test only grades them), then a FER2013 face (the published benchmark's copy
    stays, so FER2013 scores remain comparable with other work), then the first by path.
    """
    dropped: set[int] = set()
    for members in groups.members:
        if len(members) > max_group:
            continue
        if policy == "drop_cross_split":
            if any(splits[i] == "train" for i in members):
                dropped.update(i for i in members if splits[i] == "test")
        elif policy == "drop_all":
            kept = min(members, key=lambda i: (splits[i] != "train", sources[i] != "fer2013", i))
            dropped.update(i for i in members if i != kept)
    return dropped


def _shrunk(face: np.ndarray, side: int) -> np.ndarray:
    if max(face.shape) <= side:
        return face
    return cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)


def _means(face: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(face.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA).ravel()


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-6)
