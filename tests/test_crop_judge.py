"""The crop_judge stage and the review orders it gives: a judge trained on FER2013 alone puts a
planted mislabel first, and the orders are measured by how early they show the mislabels."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import emogan.crop_judge
from emogan.cli import cli
from emogan.config import DemoConfig, load_params
from emogan.crop_judge import judge_crops
from emogan.data.crop import COLUMNS as CROP_COLUMNS
from emogan.data.crop import CropRecord, read_crops
from emogan.data.crop_scores import COLUMNS, CropScore, read_crop_scores, write_crop_scores
from emogan.data.demo import make_demo
from emogan.data.fer2013 import read_fer2013
from emogan.data.merge import fer2013_samples
from emogan.data.review import ReviewDecision, write_decisions
from emogan.data.review_queue import confidence_order, found_early, suspect_order
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.progress import STAGE_TIMING

ROOT = Path(__file__).resolve().parents[1]
# Without planted label noise: the crops below are cut from test faces by their FER2013 label.
SMALL = DemoConfig(
    photos_per_emotion=1,
    faceless_photos=0,
    fer_train_per_emotion=40,
    fer_test_per_emotion=6,
    fer_label_noise=0.0,
)
PLANTED = "planted-00"  # a sad face filed under happy, as a background face would be
CROP_SIDE = 96  # crops are larger than FER2013's faces and in colour: converted as merge does


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo world, and crops of its FER2013 test faces, each in its own emotion's
    folder but one: PLANTED."""
    root = tmp_path_factory.mktemp("judge")
    make_demo(SMALL, root / "demo")
    (root / "params.yaml").write_text(
        f"fer2013: {{path: {root / 'demo' / 'fer2013.csv'}, "
        f"ferplus: {root / 'demo' / 'fer2013new.csv'}}}\n"
        "classifier: {batch_size: 32, device: cpu}\ncrop_judge: {epochs: 6}\n"
    )
    fer = read_fer2013(load_params(root / "params.yaml").fer2013)
    test_faces = [
        (i, EMOTIONS[label]) for i, label in enumerate(fer.labels) if fer.splits[i] == "test"
    ]
    rows = []
    (root / "crops" / "images").mkdir(parents=True)
    for emotion in EMOTIONS:
        faces = [i for i, shown in test_faces if shown == emotion][:3]
        rows += [(f"{emotion}-{n:02d}", emotion, fer.images[i]) for n, i in enumerate(faces)]
    sad = next(i for i, shown in test_faces if shown == "sad")
    rows.append((PLANTED, "happy", fer.images[sad]))
    with (root / "crops" / "crops.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, CROP_COLUMNS)
        writer.writeheader()
        for crop_id, emotion, gray in rows:
            rgb = np.repeat(
                np.asarray(Image.fromarray(gray).resize((CROP_SIDE,) * 2))[..., None], 3, 2
            )
            Image.fromarray(rgb).save(root / "crops" / "images" / f"{crop_id}.png")
            writer.writerow(
                dict.fromkeys(CROP_COLUMNS, "0")
                | {"crop_id": crop_id, "path": f"images/{crop_id}.png", "emotion": emotion,
                   "prob": "0.99", "source_sha256": "ab" * 32, "source_path": "x.jpg"}
            )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def judged(world: Path) -> dict:
    params = load_params(world / "params.yaml")
    return judge_crops(params, world / "crops", world / "crop_scores.csv", world / "judge.json")


def test_the_judge_scores_every_crop_and_reports_on_fer_test(world: Path, judged: dict) -> None:
    assert json.loads((world / "judge.json").read_text()) == judged
    assert set(judged) == {"fer_test_accuracy", "fer_train_images", "fer_test_images", "epochs",
                           "train_s", "crops_scored", "crops_agreeing", STAGE_TIMING}  # fmt: skip
    assert judged["fer_test_accuracy"] >= 0.8, judged
    crops = read_crops(world / "crops")
    assert judged["crops_scored"] == len(crops) > len(EMOTIONS)
    with (world / "crop_scores.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [row["crop_id"] for row in rows] == [crop.crop_id for crop in crops]
    for row in rows:
        probs = [float(row[f"prob_{emotion}"]) for emotion in EMOTIONS]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert float(row["folder_prob"]) == float(row[f"prob_{row['emotion']}"])
        assert float(row["guess_prob"]) == max(probs)


def test_the_suspect_order_puts_the_planted_mislabel_first(world: Path, judged: dict) -> None:
    crops = read_crops(world / "crops")
    scores = read_crop_scores(world / "crop_scores.csv", crops)
    happy = [crop.crop_id for crop in suspect_order(crops, scores) if crop.emotion == "happy"]
    assert happy[0] == PLANTED
    assert scores[PLANTED].guess == "sad"  # the hint the review tool shows
    assert found_early(suspect_order(crops, scores), {PLANTED}) == 1.0


def test_bench_review_queue_measures_both_orders_against_the_relabels(
    world: Path, judged: dict, tmp_path: Path
) -> None:
    decisions = tmp_path / "decisions.csv"
    when = "2026-01-01T00:00:00+00:00"
    write_decisions(decisions, [ReviewDecision(PLANTED, "relabel", "sad", "simulated", when)])
    args = ["bench", "review-queue", "--crops", str(world / "crops"),
            "--scores", str(world / "crop_scores.csv"), "--decisions", str(decisions)]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    report = json.loads(result.output)
    assert report == {"crops": judged["crops_scored"], "mislabelled": 1, "early_share": 0.2,
                      "suspect_found_early": 1.0, "confidence_found_early": 0.0}  # fmt: skip
    write_decisions(decisions, [ReviewDecision(PLANTED, "keep", "", "simulated", when)])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "relabels none of the crops" in str(result.exception)


def test_the_judge_trains_on_merges_fer2013_train_faces_alone(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Merge's reader is the judge's: a relabelling there (FER+) reaches the judge too.
    seen = []
    monkeypatch.setattr(
        emogan.crop_judge,
        "fit_classifier",
        lambda data, cfg, device: seen.append(data) or _Uniform(),
    )
    params = load_params(world / "params.yaml")
    judge_crops(params, world / "crops", tmp_path / "scores.csv", tmp_path / "judge.json")
    samples = fer2013_samples(params.fer2013).samples
    train_labels = [s.label for s in samples if s.split == "train"]
    assert seen[0].labels.tolist() == train_labels
    assert seen[0].images.shape[1:] == (1, params.image_size, params.image_size)


class _Uniform(torch.nn.Module):
    """A judge that finds every emotion equally likely."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), len(EMOTIONS)) * self.scale


def _crop(crop_id: str, emotion: str, prob: float) -> CropRecord:
    return CropRecord(crop_id, f"images/{crop_id}.png", "ab" * 32, "x.jpg", emotion, prob,
                      (0.0, 0.0, 1.0, 1.0), ())  # fmt: skip


def _score(crop_id: str, emotion: str, folder_prob: float) -> CropScore:
    rest = (1 - folder_prob) / (len(EMOTIONS) - 1)
    probs = tuple(folder_prob if e == emotion else rest for e in EMOTIONS)
    return CropScore(crop_id, emotion, probs)


def test_found_early_counts_the_first_fifth_of_every_folder() -> None:
    # 10 happy crops and 5 sad ones: the first 2 happy and the first sad are the early ones.
    crops = [_crop(f"h{n}", "happy", 0.9 + n / 100) for n in range(10)]
    crops += [_crop(f"s{n}", "sad", 0.9 + n / 100) for n in range(5)]
    scores = {c.crop_id: _score(c.crop_id, c.emotion, 0.5) for c in crops}
    scores |= {"h7": _score("h7", "happy", 0.01), "s4": _score("s4", "sad", 0.02)}
    mislabelled = {"h7", "s4", "h9"}
    assert [c.crop_id for c in suspect_order(crops, scores)][:2] == ["h7", "h0"]
    assert found_early(suspect_order(crops, scores), mislabelled) == round(2 / 3, 4)
    assert found_early(confidence_order(crops), mislabelled) == 0.0
    assert found_early(confidence_order(crops), set()) is None


def test_scores_of_other_crops_are_refused_in_one_line(tmp_path: Path) -> None:
    crops = [_crop("a-00", "happy", 0.99), _crop("b-00", "sad", 0.95)]
    path = tmp_path / "crop_scores.csv"
    write_crop_scores(path, [_score("a-00", "happy", 0.7), _score("c-00", "sad", 0.2)])
    with pytest.raises(EmoganError) as error:
        read_crop_scores(path, crops)
    assert str(error.value) == (
        f"{path}: scores other crops than crops.csv (1 unscored, 1 not in crops.csv, e.g. b-00 "
        "unscored); rerun the crop_judge stage"
    )
    write_crop_scores(path, [_score("a-00", "happy", 0.7), _score("b-00", "sad", 0.2)])
    assert set(read_crop_scores(path, crops)) == {"a-00", "b-00"}
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",1.5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(EmoganError) as error:
        read_crop_scores(path, crops)
    assert str(error.value) == f"{path} line 3: prob_neutral '1.5' is not a probability 0-1"
    path.write_text("\n".join(line.split(",", 1)[1] for line in lines) + "\n")  # no crop_id
    with pytest.raises(EmoganError) as error:
        read_crop_scores(path, crops)
    assert str(error.value) == f"{path} line 1: missing column 'crop_id'"
    with pytest.raises(EmoganError) as error:
        read_crop_scores(tmp_path / "none.csv", crops)
    assert str(error.value) == f"{tmp_path / 'none.csv'}: not found (run the crop_judge stage)"
