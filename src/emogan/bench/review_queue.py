"""Benchmark of the review tool's orders: how many of the mislabelled crops a reviewer meets
within the first fifth of every folder, in the suspect order and in the confidence order.

The mislabels are the crops a decisions file relabels: on the demo the simulated reviewer's,
who relabels exactly the background faces of another emotion (the ground truth); on real data a
finished human review.
"""

from pathlib import Path

from emogan.data.crop import read_crops
from emogan.data.crop_scores import read_crop_scores
from emogan.data.review import read_decisions
from emogan.data.review_queue import EARLY_SHARE, confidence_order, found_early, suspect_order
from emogan.errors import EmoganError


def bench_review_queue(crops_dir: Path, scores_path: Path, decisions_path: Path) -> dict:
    crops = read_crops(crops_dir)
    scores = read_crop_scores(scores_path, crops)
    decisions = read_decisions(decisions_path)
    mislabelled = {
        crop.crop_id
        for crop in crops
        if crop.crop_id in decisions and decisions[crop.crop_id].action == "relabel"
    }
    if not mislabelled:
        raise EmoganError(
            f"{decisions_path}: relabels none of the crops, so there is nothing to find (run the"
            " simulate_review stage, or finish a review first)"
        )
    return {
        "crops": len(crops),
        "mislabelled": len(mislabelled),
        "early_share": EARLY_SHARE,
        "suspect_found_early": found_early(suspect_order(crops, scores), mislabelled),
        "confidence_found_early": found_early(confidence_order(crops), mislabelled),
    }
