"""Near-duplicate faces: a perceptual hash per face, the pairs within a Hamming distance, and
their groups.

The hash is imagehash's dhash at 16x16 (256 bits) of the face as merge writes it (image_size,
gray), so a custom crop and a FER2013 face compare at the same size. dhash records whether each
pixel of a 17x16 shrink is brighter than its right neighbour: re-encoding, resizing and
brightening keep nearly all of those signs. 64-bit hashes are too coarse: on the full-size
merge benchmark unrelated faces fall within the distance planted copies need (BENCHMARKS.md).
All pairs are compared at once as four uint64 words per hash, in chunks of rows.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 16  # dhash side: HASH_SIZE**2 bits
WORDS = HASH_SIZE * HASH_SIZE // 64
PREFILTER_WORDS = 2
CHUNK_ROWS = 64  # rows compared against all others at once: 64 x 36k uint64 = 18 MB per word
DUPLICATE_COLUMNS = (
    "group", "path", "source", "split", "origin", "hash", "distance", "crowd", "dropped",
)  # fmt: skip


@dataclass(frozen=True)
class DuplicateGroups:
    """Faces whose hashes lie within the distance of another member's (a chain may be longer)."""

    members: list[list[int]]  # indices into the hashed faces, each list sorted, >= 2 per group
    hashes: np.ndarray  # N x WORDS uint64


def face_hash(gray: np.ndarray) -> np.ndarray:
    """The WORDS uint64 words of one H x W uint8 face's dhash."""
    bits = imagehash.dhash(Image.fromarray(gray), hash_size=HASH_SIZE).hash
    return np.packbits(bits.ravel()).view(">u8").astype(np.uint64)


def hash_text(words: np.ndarray) -> str:
    return "".join(f"{int(word):016x}" for word in words)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of rows within max_distance bits, and their distances.

    The first PREFILTER_WORDS words are compared for all pairs, the rest only for the pairs
    still within max_distance: the distance over some words never exceeds the whole, so no
    pair is missed, and unrelated hashes already differ in about a quarter of 128 bits.
    """
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(hashes), CHUNK_ROWS):
        block = hashes[start : start + CHUNK_ROWS]
        rest = hashes[start:]  # pairs with earlier rows were found by earlier chunks
        distance = np.zeros((len(block), len(rest)), np.uint16)
        for word in range(min(PREFILTER_WORDS, hashes.shape[1])):
            distance += np.bitwise_count(block[:, None, word] ^ rest[None, :, word])
        rows, cols = np.nonzero(distance <= max_distance)
        later = cols > rows  # each pair once, no face with itself
        rows, cols = rows[later], cols[later]
        near = distance[rows, cols]
        for word in range(PREFILTER_WORDS, hashes.shape[1]):
            near += np.bitwise_count(block[rows, word] ^ rest[cols, word]).astype(np.uint16)
        within = near <= max_distance
        found_i.append(rows[within] + start)
        found_j.append(cols[within] + start)
        found_d.append(near[within])
    pairs = np.stack([np.concatenate(found_i), np.concatenate(found_j)], axis=1).astype(np.int64)
    return pairs.reshape(-1, 2), np.concatenate(found_d).astype(np.int64)


def group_near_duplicates(hashes: np.ndarray, max_distance: int) -> DuplicateGroups:
    """Group the faces (rows of N x WORDS hashes) linked by pairs within max_distance, by
    union-find: a chain of near pairs is one group."""
    pairs, _ = near_pairs(hashes, max_distance)
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    by_root: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        by_root.setdefault(root(i), []).append(i)
    members = sorted((group for group in by_root.values() if len(group) > 1), key=lambda g: g[0])
    return DuplicateGroups(members, hashes)


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.bitwise_count(a ^ b).sum())


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
