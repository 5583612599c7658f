"""Translation grids like the thesis's figures: each row an input face, then G's translation of
it into each of the 7 emotions, under a header row that names them.

Training draws one of fixed test faces every sample_step; the samples stage draws them from the
trained generator; `emogan translate` draws one per face found in a photo, unframed (its emotion
is unknown) and with only the chosen emotions.
"""

import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emogan.data.processed import to_pixels
from emogan.emotions import EMOTIONS
from emogan.stargan.model import Generator

MIN_CELL = 96  # faces are scaled up by a whole factor to at least this many pixels
HEADER = 28  # height of the row of emotion names
GAP = 4  # white space between faces; the frame marking a face's own emotion lies in it
SEPARATOR = 10  # extra space between the input column and the translations, with a line
BLACK, GRAY, AMBER = (0, 0, 0), (160, 160, 160), (255, 176, 0)
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.5
ALL_TARGETS = tuple(range(len(EMOTIONS)))


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a grid of `rows` faces of side `size`: a header row, then per face
    the input and its translations into `targets` emotions."""

    rows: int
    size: int
    targets: int = len(EMOTIONS)

    @property
    def cell(self) -> int:
        return self.size * -(-MIN_CELL // self.size)  # 48 px faces are drawn at 96 px

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.top(self.rows), self.left(1 + self.targets), 3

    def left(self, column: int) -> int:
        """x of column 0 (the input) or of column 1 + the target's place among the targets."""
        return GAP + column * (self.cell + GAP) + (SEPARATOR if column else 0)

    def top(self, row: int) -> int:
        return HEADER + row * (self.cell + GAP)


def pick_faces(
    images: torch.Tensor, labels: torch.Tensor, rows: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` faces spread over the emotions: the k-th face of every emotion, in label order,
    before the (k+1)-th of any, each emotion's faces in a random order fixed by `seed`.

    Uses its own random generator, so picking faces never shifts training's random stream.
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    label_of = labels.tolist()
    turn: dict[int, tuple[int, int]] = {}
    seen = [0] * len(EMOTIONS)
    for index in order:
        label = label_of[index]
        turn[index] = (seen[label], label)
        seen[label] += 1
    picked = torch.tensor(sorted(turn, key=turn.__getitem__)[:rows], device=labels.device)
    return images[picked], labels[picked]


@torch.no_grad()
def translation_grid(
    G: Generator,
    faces: torch.Tensor,
    labels: torch.Tensor | None,
    targets: Sequence[int] = ALL_TARGETS,
) -> np.ndarray:
    """H x W x 3 uint8 RGB: one row per face (N x C x H x W in [-1, 1]), the input and then its
    translation into each of `targets` (emotion labels, all 7 unless told); the translation into the
    face's own emotion is framed, none when labels is None (faces of unknown emotion).

    G's mode does not matter: its InstanceNorm keeps no running statistics (see model.py).
    """
    n, targets = faces.size(0), tuple(targets)
    wanted = torch.tensor(targets, device=faces.device).repeat_interleave(n)
    fakes = G(faces.repeat(len(targets), 1, 1, 1), F.one_hot(wanted, len(EMOTIONS)).float())
    # Column-major: column 0 holds the inputs, column 1 + i the translations into targets[i].
    columns = _to_rgb(torch.cat([faces, fakes]).view(1 + len(targets), *faces.shape))
    layout = Layout(n, faces.size(-1), len(targets))
    grid = np.full(layout.shape, 255, np.uint8)
    _draw_header(grid, layout, [EMOTIONS[target] for target in targets])
    frame = GAP - 1
    for row, label in enumerate([] if labels is None else labels.tolist()):
        if label not in targets:
            continue
        x, y = layout.left(1 + targets.index(label)), layout.top(row)
        # A square behind the translation into the face's own emotion: a frame in the gap.
        grid[y - frame : y + layout.cell + frame, x - frame : x + layout.cell + frame] = AMBER
    for column, faces_of_column in enumerate(columns):
        for row, face in enumerate(faces_of_column):
            x, y = layout.left(column), layout.top(row)
            grid[y : y + layout.cell, x : x + layout.cell] = cv2.resize(
                face, (layout.cell, layout.cell), interpolation=cv2.INTER_NEAREST
            )
    return grid


def _to_rgb(images: torch.Tensor) -> np.ndarray:
    """... x C x H x W in [-1, 1] -> ... x H x W x 3 uint8; gray is repeated over R, G and B."""
    pixels = to_pixels(images)
    pixels = pixels.expand(*pixels.shape[:-3], 3, *pixels.shape[-2:])  # a no-op for RGB
    return pixels.movedim(-3, -1).contiguous().cpu().numpy()


def _draw_header(grid: np.ndarray, layout: Layout, targets: Sequence[str]) -> None:
    for column, name in enumerate(("input", *targets)):
        (width, height), _ = cv2.getTextSize(name, FONT, FONT_SCALE, 1)
        x = layout.left(column) + (layout.cell - width) // 2
        cv2.putText(
            grid, name, (x, (HEADER + height) // 2), FONT, FONT_SCALE, BLACK, 1, cv2.LINE_AA
        )
    line = layout.left(1) - (GAP + SEPARATOR) // 2 - 1
    grid[HEADER:, line : line + 2] = GRAY


def encode_png(grid: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return buffer.getvalue()
