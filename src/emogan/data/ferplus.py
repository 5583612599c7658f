"""FER+ votes (Microsoft's `fer2013new.csv`) read by row position and turned into labels.

The votes file has one row per FER2013 data row, in the same order: row k of one is row k of
the other (names cannot join them: four image names appear twice, and the 173 rows that are not
faces have no name). Each row holds 10 annotators' votes over the columns of VOTE_COLUMNS.

How the votes become a label (`fer2013.ferplus_mode`), following Microsoft's reader
(microsoft/FERPlus, src/ferplus.py) where it has one:
- A single vote for a column counts as none (Microsoft's outlier removal).
- contempt, unknown and NF are no FER2013 emotion. One listed in `fer2013.ferplus_drop` keeps its
  votes: a face it wins is dropped (the reason is its name), and in majority mode its votes count
  against the majority, as in Microsoft's reader. One not listed is set aside: its votes are
  removed before the vote, so the face goes to the emotions' vote (contempt's votes removed and
  the rest renormalised; NF not listed trusts that every row is a face).
- majority: a face keeps the class with more than half of the counted votes, else it is dropped
  (no_majority).
- plurality: the class with the most votes. A tie goes to FER2013's own label when it is among
  the tied classes (the annotators then do not contradict it), else to the first tied column in
  FER+'s order (Microsoft's argmax), which puts every emotion before contempt, unknown and NF.
- probability: the plurality's label (the GAN needs one label per face) plus the share of the
  emotion votes each of the 7 emotions got, which the classifier trains on as soft labels (as
  Microsoft's crossentropy mode, which keeps only the top emotions; here every counted one).
- original: FER2013's own labels; the votes file is not read.
A face left with no counted vote is dropped (no_votes).
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emogan.config import Fer2013Config
from emogan.data.fer2013 import FerImages
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.errors import EmoganError

# FER+'s vote columns in its order, and the FER2013 emotion of each that has one.
EMOTION_OF_COLUMN = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear",
}  # fmt: skip
NON_EMOTIONS = ("contempt", "unknown", "NF")
VOTE_COLUMNS = (*EMOTION_OF_COLUMN, *NON_EMOTIONS)
HEADER = ("Usage", "Image name", *VOTE_COLUMNS)
DROP_REASONS = ("no_majority", "no_votes", *NON_EMOTIONS)
# FER+ column of each FER2013 label, and the FER2013 label of each emotion column.
_COLUMN_OF_EMOTION = {emotion: VOTE_COLUMNS.index(c) for c, emotion in EMOTION_OF_COLUMN.items()}
COLUMN_OF_LABEL = np.array([_COLUMN_OF_EMOTION[emotion] for emotion in EMOTIONS])
LABEL_OF_COLUMN = np.array([LABEL_OF[e] for e in EMOTION_OF_COLUMN.values()] + [-1, -1, -1])
_COUNT = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class FerPlusLabels:
    """What the votes make of some FER2013 rows, one entry per row."""

    labels: np.ndarray  # int64 FER2013 label; -1 where the face is dropped
    reasons: np.ndarray  # str: "" where kept, else one of DROP_REASONS
    shares: np.ndarray | None  # N x 7 float emotion vote shares in FER2013's order (probability)

    @property
    def kept(self) -> np.ndarray:
        return self.labels >= 0


def ferplus_labels(cfg: Fer2013Config, fer: FerImages) -> FerPlusLabels:
    """fer's rows relabelled per cfg.ferplus_mode from the votes file cfg.ferplus."""
    if cfg.ferplus_mode == "original":
        return FerPlusLabels(fer.labels.copy(), np.full(len(fer.labels), ""), None)
    if fer.rows is None:
        raise EmoganError(
            f"{cfg.path}: FER+ votes go with the CSV's rows, and a folder has no row order "
            f"(set fer2013.ferplus_mode: original, or fer2013.path to the Kaggle CSV)"
        )
    votes = read_votes(Path(cfg.ferplus), Path(cfg.path), len(fer.labels) + fer.skipped)
    return vote_labels(votes[fer.rows], fer.labels, cfg.ferplus_mode, cfg.ferplus_drop)


def read_votes(path: Path, fer_path: Path, fer_rows: int) -> np.ndarray:
    """The fer_rows x 10 vote counts of a FER+ file (VOTE_COLUMNS order); refuse a bad file
    with one line naming it and the line."""
    if not path.is_file():
        raise EmoganError(
            f"{path}: not found (set fer2013.ferplus to Microsoft's fer2013new.csv, "
            "or fer2013.ferplus_mode: original)"
        )
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise EmoganError(f"{path}: empty file (need the header {','.join(HEADER)})") from None
    except pd.errors.ParserError as error:
        raise EmoganError(f"{path}: not a valid CSV ({str(error).strip()})") from None
    except UnicodeDecodeError:
        raise EmoganError(f"{path}: not a text CSV file") from None
    header = tuple(name.strip() for name in table.columns)
    if header != HEADER:
        raise EmoganError(f"{path} line 1: header {','.join(header)} (need {','.join(HEADER)})")
    if len(table) != fer_rows:
        raise EmoganError(
            f"{path} line {len(table) + 1}: {len(table)} data rows, but {fer_path} has "
            f"{fer_rows} (the votes go with its rows by position: set fer2013.ferplus to its "
            "FER+ file, or fer2013.ferplus_mode: original)"
        )
    texts = table.iloc[:, 2:].apply(lambda column: column.str.strip())
    valid = texts.apply(lambda column: column.str.fullmatch(_COUNT)).to_numpy(bool)
    if not valid.all():
        row, column = np.argwhere(~valid)[0]
        raise EmoganError(
            f"{path} line {row + 2}: {VOTE_COLUMNS[column]} is {texts.iat[row, column]!r} "
            "(need a vote count, an integer >= 0)"
        )
    votes = texts.to_numpy().astype(np.int64)
    empty = np.flatnonzero(votes.sum(axis=1) == 0)
    if len(empty):
        raise EmoganError(f"{path} line {empty[0] + 2}: no votes (every count is 0)")
    return votes


def vote_labels(
    votes: np.ndarray, fer_labels: np.ndarray, mode: str, drop: tuple[str, ...]
) -> FerPlusLabels:
    """Labels from N x 10 votes per the module's rules; fer_labels (FER2013's own) break ties."""
    counted = np.where(votes > 1, votes, 0)
    for column in NON_EMOTIONS:
        if column not in drop:
            counted[:, VOTE_COLUMNS.index(column)] = 0
    rows = np.arange(len(counted))
    best = counted.max(axis=1)
    tied = counted == best[:, None]
    own = COLUMN_OF_LABEL[fer_labels]
    winner = np.where(tied[rows, own], own, tied.argmax(axis=1))
    reasons = np.full(len(counted), "", dtype=object)
    if mode == "majority":
        reasons[2 * best <= counted.sum(axis=1)] = "no_majority"
    for column in NON_EMOTIONS:
        reasons[winner == VOTE_COLUMNS.index(column)] = column
    reasons[best == 0] = "no_votes"
    labels = np.where(reasons == "", LABEL_OF_COLUMN[winner], -1)
    shares = None
    if mode == "probability":
        emotion_votes = counted[:, COLUMN_OF_LABEL].astype(np.float64)
        totals = emotion_votes.sum(axis=1, keepdims=True)
        shares = np.divide(
            emotion_votes, totals, out=np.zeros_like(emotion_votes), where=totals > 0
        )
    return FerPlusLabels(labels.astype(np.int64), reasons.astype(str), shares)


def ferplus_metrics(mode: str, fer_labels: np.ndarray, result: FerPlusLabels) -> dict:
    """{mode, relabelled: {from: {to: n, total}}, dropped: {from: {reason: n, total}}} per
    FER2013 label and "all"; every key always present, so DVC lines runs up by key."""
    relabelled, dropped = {}, {}
    for label, emotion in [*enumerate(EMOTIONS), (None, "all")]:
        mine = np.ones(len(fer_labels), bool) if label is None else fer_labels == label
        moved = mine & result.kept & (result.labels != fer_labels)
        to = {e: int((moved & (result.labels == t)).sum()) for t, e in enumerate(EMOTIONS)}
        if label is not None:
            del to[emotion]
        relabelled[emotion] = to | {"total": int(moved.sum())}
        why = {reason: int((mine & (result.reasons == reason)).sum()) for reason in DROP_REASONS}
        dropped[emotion] = why | {"total": int((mine & ~result.kept).sum())}
    return {"mode": mode, "relabelled": relabelled, "dropped": dropped}
