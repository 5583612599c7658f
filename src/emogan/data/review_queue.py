"""The orders the review tool offers the crops in, and how early an order shows the mislabels.

The tool shows one emotion folder at a time, so both orders go folder by folder (FER2013's
order); within a folder, `confidence` puts MTCNN's least certain faces first (the likeliest
non-faces) and `suspect` the faces whose folder emotion the crop judge finds least likely (the
likeliest mislabels: background faces that show another emotion).
"""

import math
from collections.abc import Iterable, Mapping

from emogan.data.crop import CropRecord
from emogan.data.crop_scores import CropScore
from emogan.emotions import EMOTIONS

ORDERS = ("suspect", "confidence")
EARLY_SHARE = 0.2  # of each folder: the part of the queue a measure of an order looks at


def confidence_order(crops: Iterable[CropRecord]) -> list[CropRecord]:
    return sorted(crops, key=lambda c: (EMOTIONS.index(c.emotion), c.prob, c.crop_id))


def suspect_order(crops: Iterable[CropRecord], scores: Mapping[str, CropScore]) -> list[CropRecord]:
    """Crops whose scores read_crop_scores has matched to them."""
    return sorted(
        crops,
        key=lambda c: (EMOTIONS.index(c.emotion), scores[c.crop_id].folder_prob, c.crop_id),
    )


def found_early(
    queue: list[CropRecord], mislabelled: set[str], share: float = EARLY_SHARE
) -> float | None:
    """The share of the mislabelled crops that lie within the first `share` (rounded up) of
    their folder's part of queue: what a reviewer finds who reviews only that much of every
    folder. None without mislabels."""
    by_folder: dict[str, list[str]] = {}
    for crop in queue:
        by_folder.setdefault(crop.emotion, []).append(crop.crop_id)
    early = {
        crop_id for ids in by_folder.values() for crop_id in ids[: math.ceil(share * len(ids))]
    }
    if not mislabelled:
        return None
    return round(len(early & mislabelled) / len(mislabelled), 4)
