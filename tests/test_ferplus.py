"""FER+ votes: reading by row position, refusals, and the majority, plurality and probability
labels, on files in Microsoft's real format."""

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_merge import crops, read_index, write_reviewed

from emogan.classifier import _balanced_class_weights, _loss, fit_classifier
from emogan.config import ClassifierConfig, Fer2013Config, MergeConfig, parse_params
from emogan.data.fer2013 import read_fer2013
from emogan.data.ferplus import (
    DROP_REASONS,
    HEADER,
    VOTE_COLUMNS,
    ferplus_labels,
    ferplus_metrics,
    read_votes,
    vote_labels,
)
from emogan.data.merge import SOFT_LABELS_FILE, merge_dataset
from emogan.data.processed import load_split
from emogan.emotions import EMOTIONS, LABEL_OF
from emogan.errors import EmoganError

ALL_DROPPED = ("unknown", "NF", "contempt")


def votes_of(**counts: int) -> list[int]:
    """A row of FER+ votes in its column order from {column: count}."""
    return [counts.get(column, 0) for column in VOTE_COLUMNS]


# (FER2013 label, Usage, FER+ image name, votes): the real file's quirks, an empty name with
# NF = 10 (not a face) and a name that appears twice, among ordinary rows.
ROWS = [
    (LABEL_OF["happy"], "Training", "fer0000000.png", votes_of(happiness=9, neutral=1)),
    (LABEL_OF["sad"], "Training", "fer0000001.png", votes_of(neutral=6, sadness=3, anger=1)),
    (LABEL_OF["angry"], "Training", "", votes_of(NF=10)),
    (LABEL_OF["fear"], "Training", "fer0000003.png", votes_of(fear=4, surprise=4, unknown=2)),
    (LABEL_OF["surprise"], "PublicTest", "fer0000003.png", votes_of(surprise=5, fear=3, anger=2)),
    (LABEL_OF["neutral"], "PublicTest", "fer0000005.png", votes_of(contempt=6, neutral=4)),
    (LABEL_OF["disgust"], "PrivateTest", "fer0000006.png", votes_of(unknown=7, disgust=3)),
    (LABEL_OF["angry"], "PrivateTest", "fer0000007.png", votes_of(anger=3, disgust=3, sadness=2)),
]


def write_fer2013(path: Path, rows: list[tuple[int, str, str, list[int]]]) -> Path:
    pixels = " ".join(["128"] * 48 * 48)
    lines = ["emotion,pixels,Usage"] + [f"{label},{pixels},{usage}" for label, usage, *_ in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_ferplus(path: Path, rows: list[tuple[int, str, str, list[int]]]) -> Path:
    lines = [",".join(HEADER)] + [
        ",".join([usage, name, *map(str, votes)]) for _, usage, name, votes in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_fer2013(tmp_path / "fer2013.csv", ROWS), write_ferplus(
        tmp_path / "fer2013new.csv", ROWS
    )


def relabel(files: tuple[Path, Path], mode: str, **cfg: object):
    fer_csv, votes = files
    fer_cfg = Fer2013Config(path=fer_csv, ferplus=votes, ferplus_mode=mode, **cfg)
    fer = read_fer2013(fer_cfg)
    return fer, ferplus_labels(fer_cfg, fer)


def named(labels: np.ndarray) -> list[str]:
    return [EMOTIONS[label] if label >= 0 else "-" for label in labels.tolist()]


def test_reads_by_position_despite_empty_and_duplicate_names(files):
    votes = read_votes(files[1], files[0], len(ROWS))
    np.testing.assert_array_equal(votes, np.array([row[3] for row in ROWS]))


def test_majority(files):
    _, result = relabel(files, "majority")
    # single votes count as none: row 0 is 9 of 9, row 4 surprise 5 of 10 is no majority
    assert named(result.labels) == ["happy", "neutral", "-", "-", "-", "-", "-", "-"]
    assert result.reasons.tolist() == [
        "", "", "NF", "no_majority", "no_majority", "contempt", "unknown", "no_majority",
    ]  # fmt: skip
    assert result.shares is None


def test_plurality_ties_go_to_fer2013s_own_label(files):
    _, result = relabel(files, "plurality")
    # row 3 (fear) ties fear-surprise: fear kept; row 7 (angry) ties anger-disgust: angry kept
    assert named(result.labels) == [
        "happy", "neutral", "-", "fear", "surprise", "-", "-", "angry",
    ]  # fmt: skip


def test_tie_without_fer2013s_label_goes_to_ferplus_column_order():
    votes = np.array([votes_of(fear=4, surprise=4, happiness=2)])
    result = vote_labels(votes, np.array([LABEL_OF["sad"]]), "plurality", ALL_DROPPED)
    assert named(result.labels) == ["surprise"]  # surprise comes before fear in FER+'s columns


def test_categories_not_dropped_are_set_aside_before_the_vote(files):
    _, result = relabel(files, "majority", ferplus_drop=("NF",))
    # contempt's 6 votes set aside: neutral 4 of 4; unknown's 7: disgust 3 of 3
    assert named(result.labels)[5:7] == ["neutral", "disgust"]
    _, result = relabel(files, "plurality", ferplus_drop=())
    assert result.reasons[2] == "no_votes"  # the NF row has nothing left


def test_probability_gives_the_plurality_label_and_emotion_vote_shares(files):
    _, result = relabel(files, "probability")
    assert named(result.labels) == named(relabel(files, "plurality")[1].labels)
    shares = dict(zip(EMOTIONS, result.shares[4].tolist(), strict=True))
    # row 4: surprise 5, fear 3, anger 2 of 10 counted votes
    assert shares == pytest.approx(
        {"angry": 0.2, "disgust": 0, "fear": 0.3, "happy": 0, "sad": 0, "surprise": 0.5,
         "neutral": 0}
    )  # fmt: skip
    assert result.shares[0].tolist() == [0, 0, 0, 1, 0, 0, 0]  # neutral's single vote left out
    assert np.allclose(result.shares[result.kept].sum(axis=1), 1)


def test_metrics_count_relabelled_and_dropped_per_fer2013_class(files):
    fer, result = relabel(files, "majority")
    metrics = ferplus_metrics("majority", fer.labels, result)
    assert metrics["mode"] == "majority"
    others = [emotion for emotion in EMOTIONS if emotion != "sad"]
    assert metrics["relabelled"]["sad"] == dict.fromkeys(others, 0) | {"neutral": 1, "total": 1}
    assert metrics["relabelled"]["all"]["total"] == 1 and metrics["relabelled"]["all"]["neutral"]
    assert set(metrics["relabelled"]["happy"]) == {*EMOTIONS, "total"} - {"happy"}
    assert metrics["dropped"]["angry"] == dict.fromkeys(DROP_REASONS, 0) | {
        "NF": 1, "no_majority": 1, "total": 2,
    }  # fmt: skip
    assert metrics["dropped"]["all"]["total"] == 6
    assert set(metrics["dropped"]) == {*EMOTIONS, "all"}


def test_only_rows_of_the_used_splits_are_relabelled(files):
    fer, result = relabel(files, "plurality", test_usage=("PrivateTest",))
    assert fer.rows.tolist() == [0, 1, 2, 3, 6, 7] and fer.skipped == 2
    assert named(result.labels) == ["happy", "neutral", "-", "fear", "-", "angry"]


def test_original_does_not_read_the_votes(files, tmp_path):
    fer_cfg = Fer2013Config(path=files[0], ferplus=tmp_path / "absent.csv", ferplus_mode="original")
    fer = read_fer2013(fer_cfg)
    result = ferplus_labels(fer_cfg, fer)
    np.testing.assert_array_equal(result.labels, fer.labels)
    assert ferplus_metrics("original", fer.labels, result)["dropped"]["all"]["total"] == 0


def test_folders_have_no_row_order(tmp_path):
    fer = read_fer2013(Fer2013Config(path=_one_folder_face(tmp_path)))
    cfg = Fer2013Config(path=tmp_path / "fer", ferplus_mode="plurality")
    with pytest.raises(EmoganError, match=r"fer: FER\+ votes go with the CSV's rows.*original"):
        ferplus_labels(cfg, fer)


def _one_folder_face(tmp_path: Path) -> Path:
    folder = tmp_path / "fer" / "train" / "happy"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "a.png"), np.full((48, 48), 100, np.uint8))
    return tmp_path / "fer"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: ["Usage,Image name,neutral,happy"] + lines[1:], r"line 1: header"),
        (lambda lines: lines[:-1], r"line 8: 7 data rows, but .*fer2013.csv has 8"),
        (lambda lines: [*lines, lines[1]], r"line 10: 9 data rows, but .*fer2013.csv has 8"),
        (lambda lines: _row(lines, 3, "Training,fer0000002.png,0,0,0,0,0,0,0,0,0,0"),
         r"line 4: no votes"),
        (lambda lines: _row(lines, 5, "Training,fer0000004.png,5,-1,0,0,0,0,0,0,6,0"),
         r"line 6: happiness is '-1' \(need a vote count"),
        (lambda lines: _row(lines, 2, "Training,fer0000001.png,9,1.5,0,0,0,0,0,0,0,0"),
         r"line 3: happiness is '1.5'"),
    ],
)  # fmt: skip
def test_a_bad_votes_file_is_refused_with_its_line(files, edit, message):
    fer_csv, votes = files
    lines = votes.read_text().splitlines()
    votes.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(EmoganError, match=f"{votes}.*{message}"):
        relabel(files, "majority")


def _row(lines: list[str], line_index: int, text: str) -> list[str]:
    return [*lines[:line_index], text, *lines[line_index + 1 :]]


def test_a_missing_votes_file_names_the_key(files, tmp_path):
    cfg = Fer2013Config(path=files[0], ferplus=tmp_path / "none.csv")
    with pytest.raises(EmoganError, match=r"none.csv: not found.*fer2013.ferplus"):
        ferplus_labels(cfg, read_fer2013(cfg))


def test_config_refuses_an_unknown_mode_and_category():
    with pytest.raises(EmoganError, match=r"fer2013.ferplus_mode"):
        parse_params({"fer2013": {"ferplus_mode": "vote"}})
    with pytest.raises(EmoganError, match=r"fer2013.ferplus_drop"):
        parse_params({"fer2013": {"ferplus_drop": ["sadness"]}})


# --- in the merge stage and the classifier --------------------------------------------------


def merge(files: tuple[Path, Path], out: Path, mode: str, include_custom: bool = False) -> dict:
    return merge_dataset(
        Fer2013Config(path=files[0], ferplus=files[1], ferplus_mode=mode),
        MergeConfig(include_custom=include_custom, custom_test_fraction=0.0),
        image_size=16,
        reviewed_dir=out.parent / "reviewed",
        out_dir=out,
        metrics_path=out.parent / f"{out.name}.json",
    )


def test_merge_relabels_and_drops_fer2013_rows_and_counts_them(files, tmp_path):
    metrics = merge(files, tmp_path / "processed", "majority")
    index = read_index(tmp_path / "processed")
    assert [(row["origin"], row["emotion"]) for row in index] == [
        ("fer2013:line:2", "happy"), ("fer2013:line:3", "neutral"),
    ]  # fmt: skip
    assert index[1]["path"] == "train/neutral/fer-000003.png"
    assert metrics["all"]["fer2013"]["total"] == 2
    fer, result = relabel(files, "majority")
    assert metrics["ferplus"] == ferplus_metrics("majority", fer.labels, result)
    assert metrics["ferplus"]["dropped"]["all"]["total"] == 6
    assert not (tmp_path / "processed" / SOFT_LABELS_FILE).exists()


def test_probability_soft_labels_reach_the_classifiers_loss(files, tmp_path, monkeypatch):
    write_reviewed(tmp_path / "reviewed", crops(2))
    merge(files, tmp_path / "processed", "probability", include_custom=True)
    data = load_split(tmp_path / "processed", "train", torch.device("cpu"))
    index = [row for row in read_index(tmp_path / "processed") if row["split"] == "train"]
    by_origin = dict(zip([row["origin"] for row in index], data.soft_labels.tolist(), strict=True))
    assert by_origin["fer2013:line:5"] == pytest.approx([0, 0, 0.5, 0, 0, 0.5, 0])
    custom = [row for row in index if row["source"] == "custom"]
    for row in custom:  # one-hot
        assert by_origin[row["origin"]] == [float(e == row["emotion"]) for e in EMOTIONS]

    targets = []
    cross_entropy = torch.nn.functional.cross_entropy

    def spy(logits, target, **kwargs):  # type: ignore[no-untyped-def]
        targets.append(target)
        return cross_entropy(logits, target, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    cfg = ClassifierConfig(epochs=1, batch_size=64, width=4, device="cpu")
    fit_classifier(data, cfg, torch.device("cpu"))
    seen = torch.cat(targets)
    assert seen.dtype == torch.float32 and seen.shape == data.soft_labels.shape
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, data.soft_labels.tolist()))

    targets.clear()
    fit_classifier(replace(data, soft_labels=None), cfg, torch.device("cpu"))
    assert torch.cat(targets).dtype == torch.int64  # hard labels without soft ones


def test_one_hot_soft_labels_give_the_hard_labels_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, len(EMOTIONS), generator=generator)
    labels = torch.randint(0, len(EMOTIONS), (64,), generator=generator)
    weight = _balanced_class_weights(labels)
    one_hot = torch.nn.functional.one_hot(labels, len(EMOTIONS)).float()
    torch.testing.assert_close(
        _loss(logits, labels, one_hot, weight), _loss(logits, labels, None, weight)
    )


def test_the_soft_loss_is_lowest_at_the_shares_whatever_the_class_weights():
    shares = torch.tensor([[0.6, 0.25, 0.05, 0.025, 0.025, 0.025, 0.025]])  # angry, some disgust
    weight = torch.tensor([1.0, 10.0, 1, 1, 1, 1, 1])  # disgust rare
    logits = shares.log().requires_grad_()
    _loss(logits, torch.tensor([0]), shares, weight).backward()
    # per-class weighting would pull towards disgust here (gradient ~ weight x share - ...)
    torch.testing.assert_close(logits.grad, torch.zeros_like(logits))
