"""crop_scores.csv, the crop judge's verdict on every crop: how likely it finds each emotion.

The crop_judge stage writes it; the review tool's suspect order and the simulated review's
measure of that order read it. Torch-free, so the review tool starts without loading torch.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from emogan import atomic
from emogan.data.crop import CropRecord
from emogan.data.csv_rows import csv_rows
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError

PROB_COLUMNS = tuple(f"prob_{emotion}" for emotion in EMOTIONS)
# folder_prob repeats prob_<emotion>: the column to sort by when the file is opened by hand.
COLUMNS = ("crop_id", "emotion", "folder_prob", "guess", "guess_prob", *PROB_COLUMNS)


@dataclass(frozen=True)
class CropScore:
    crop_id: str
    emotion: str  # the crop's folder emotion, as crops.csv gives it
    probs: tuple[float, ...]  # the judge's probability of each emotion, in EMOTIONS order

    @property
    def folder_prob(self) -> float:
        """How likely the judge finds the folder's emotion: low means a likely mislabel."""
        return self.probs[EMOTIONS.index(self.emotion)]

    @property
    def guess(self) -> str:
        return EMOTIONS[self.probs.index(max(self.probs))]

    @property
    def guess_prob(self) -> float:
        return max(self.probs)


def write_crop_scores(path: Path, scores: list[CropScore]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for score in scores:
        probs = (f"{p:.5f}" for p in score.probs)
        writer.writerow(
            [score.crop_id, score.emotion, f"{score.folder_prob:.5f}", score.guess,
             f"{score.guess_prob:.5f}", *probs]
        )  # fmt: skip
    atomic.write_text(Path(path), text.getvalue())


def read_crop_scores(path: Path, crops: list[CropRecord]) -> dict[str, CropScore]:
    """crop_id -> score, for exactly the crops of crops.csv; a malformed row fails naming its
    line, and a file scored on other crops (crops re-run since) fails in one line."""
    path = Path(path)
    scores = {}
    try:
        for row, where in csv_rows(path, COLUMNS):
            score = _parse_score(row, where)
            scores[score.crop_id] = score
    except FileNotFoundError:
        raise EmoganError(f"{path}: not found (run the crop_judge stage)") from None
    crop_ids = {crop.crop_id for crop in crops}
    unscored, unknown = sorted(crop_ids - scores.keys()), sorted(scores.keys() - crop_ids)
    if unscored or unknown:
        example = f"{unscored[0]} unscored" if unscored else f"{unknown[0]} not in crops.csv"
        raise EmoganError(
            f"{path}: scores other crops than crops.csv ({len(unscored)} unscored, "
            f"{len(unknown)} not in crops.csv, e.g. {example}); rerun the crop_judge stage"
        )
    return scores


def _parse_score(row: dict[str, str | None], where: str) -> CropScore:
    crop_id, emotion = ((row.get(c) or "").strip() for c in ("crop_id", "emotion"))
    if emotion not in EMOTIONS:
        raise EmoganError(f"{where}: emotion {emotion!r} is not one of {', '.join(EMOTIONS)}")
    probs = []
    for column in PROB_COLUMNS:
        try:
            value = float(row.get(column) or "")
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise EmoganError(f"{where}: {column} {row.get(column)!r} is not a probability 0-1")
        probs.append(value)
    return CropScore(crop_id, emotion, tuple(probs))
