"""The evaluate stage: its metrics mean what they say, and a real tiny run is scored and tracked."""

import csv
import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from stargan_helpers import tiny_params, write_dataset
from torch import nn

from emogan.classifier import train_classifier
from emogan.config import Params
from emogan.data.processed import dataset_hash, load_split
from emogan.emotions import EMOTIONS
from emogan.errors import EmoganError
from emogan.evaluate import (
    SCOPES,
    InceptionFid,
    JudgedFaces,
    Translations,
    distinctness,
    evaluate_translations,
    frechet_distance,
    judge_faces,
    score_translations,
    translate_test_set,
    warning_lines,
)
from emogan.serving import REGISTERED_MODEL
from emogan.stargan.train import train_stargan

C = len(EMOTIONS)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), train_per_emotion=20, test_per_emotion=4)


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Params:
    params = tiny_params(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    classifier = {"epochs": 6, "batch_size": 16, "val_fraction": 0.25, "device": "cpu"}
    return params.model_copy(
        update={
            "classifier": params.classifier.model_copy(update=classifier),
            "evaluate": params.evaluate.model_copy(update={"batch_size": 5, "device": "cpu"}),
        }
    )


@pytest.fixture(scope="module")
def judge_dir(data: Path, params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("classifier")
    metrics = train_classifier(
        params, data, folder / "model", folder / "m.json", folder / "confusion.csv"
    )
    assert metrics["test_accuracy"] == 1.0  # the tiny world's classes are bright bands
    return folder / "model"


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return x


class _Constant(nn.Module):
    """The same grey face whatever the input and the target: a collapsed generator."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class _Oracle(nn.Module):
    """Answers every target with a real test face of that emotion: a perfect translator."""

    def __init__(self, faces: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.example = torch.stack([faces[labels == label][0] for label in range(C)])

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.example[c.argmax(1)]


def _scores(G: nn.Module, data: Path, judge_dir: Path) -> dict:
    from emogan.classifier import load_classifier

    judge = load_classifier(judge_dir, CPU)
    test = load_split(data, "test", CPU)
    done = translate_test_set(G, test, judge, batch_size=5)
    return score_translations(done, judge_faces(judge, test, batch_size=5))


def test_a_generator_that_changes_nothing_hits_only_the_identity_targets_and_is_flagged(
    data: Path, judge_dir: Path
) -> None:
    scores = _scores(_Identity(), data, judge_dir)
    for scope in SCOPES:
        s = scores[scope]
        assert s["judge_accuracy_real"] == 1.0  # the tiny world's classes are bright bands
        assert s["target_accuracy"] == pytest.approx(1 / C, abs=1e-4)
        assert s["target_accuracy_changed"] == 0.0
        assert set(s["per_target"].values()) == {0.0}
        assert s["keep_l1"] == s["cycle_l1"] == s["identity_l1"] == s["distinctness"] == 0.0
        assert s["collapsed"] and s["copies_input"] and not s["judge_fooled"]
    assert set(warning_lines(scores)) == {
        f"{scope}.{flag}" for scope in SCOPES for flag in ("collapsed", "copies_input")
    }


def test_a_constant_output_is_collapsed_but_no_copy(data: Path, judge_dir: Path) -> None:
    scores = _scores(_Constant(), data, judge_dir)
    for scope in SCOPES:
        assert scores[scope]["distinctness"] == 0.0 and scores[scope]["keep_l1"] > 0.1
        assert scores[scope]["collapsed"] and not scores[scope]["copies_input"]
    assert (
        "the 7 translations of a face are near-identical"
        in warning_lines(scores)["custom.collapsed"]
    )


def test_a_perfect_translator_hits_every_target_and_loses_the_face(
    data: Path, judge_dir: Path
) -> None:
    scores = _scores(_Oracle(*_test_set(data)), data, judge_dir)
    for scope in SCOPES:
        s = scores[scope]
        assert s["target_accuracy"] == s["target_accuracy_changed"] == 1.0
        assert set(s["per_target"].values()) == {1.0}
        assert s["keep_l1"] > 0.1 and s["cycle_l1"] > 0.0  # other faces, not its own
        assert s["identity_l1"] > 0.0 and s["distinctness"] > 0.1
        assert not (s["collapsed"] or s["copies_input"] or s["judge_fooled"])
    assert warning_lines(scores) == {}


def test_scores_are_split_by_source_and_a_judge_beaten_by_translations_is_fooled() -> None:
    """4 real test faces per source; on custom the judge gets 1 of 4 real faces right but
    every translation: fooled there, and only there."""
    labels = torch.tensor([0, 1, 2, 3] * 2)
    sources = torch.tensor([0] * 4 + [1] * 4)  # fer2013, then custom
    real_predicted = torch.tensor([0, 1, 2, 3, 0, 0, 0, 0])
    test = JudgedFaces(labels, sources, real_predicted, torch.randn(8, 3))
    pairs = torch.arange(8).repeat_interleave(C)  # face of each pair
    targets = torch.arange(C).repeat(8)
    hit_on_custom = sources[pairs] == 1
    predicted = torch.where(hit_on_custom, targets, (targets + 1) % C)  # fer2013: all wrong
    done = Translations(
        label=labels[pairs],
        source=sources[pairs],
        target=targets,
        predicted=predicted,
        keep_l1=torch.full((8 * C,), 0.2),
        cycle_l1=torch.full((8 * C,), 0.1),
        distinctness=torch.where(hit_on_custom, 0.3, 0.05),
        features=torch.randn(8 * C, 3),
    )
    scores = score_translations(done, test)
    assert [scores[scope]["test_images"] for scope in SCOPES] == [8, 4, 4]
    assert [scores[scope]["judge_accuracy_real"] for scope in SCOPES] == [0.625, 1.0, 0.25]
    assert [scores[scope]["target_accuracy_changed"] for scope in SCOPES] == [0.5, 0.0, 1.0]
    assert [scores[scope]["distinctness"] for scope in SCOPES] == [0.175, 0.05, 0.3]
    assert [scores[scope]["judge_fooled"] for scope in SCOPES] == [False, False, True]
    assert list(warning_lines(scores)) == ["custom.judge_fooled"]
    # 0.5 overall against 0.625 real: not fooled; with real accuracy 0.45 it would be by 0.05,
    # within two standard errors of an accuracy measured on 8 faces.


def test_a_source_without_test_faces_keeps_its_keys_with_no_values() -> None:
    test = JudgedFaces(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                       torch.randn(2, 3))  # fmt: skip
    pairs, targets = torch.arange(2).repeat_interleave(C), torch.arange(C).repeat(2)
    done = Translations(test.labels[pairs], test.sources[pairs], targets, targets,
                        torch.ones(2 * C), torch.ones(2 * C), torch.ones(2 * C),
                        torch.randn(2 * C, 3))  # fmt: skip
    scores = score_translations(done, test)
    assert set(scores["custom"]) == set(scores["fer2013"])
    assert scores["custom"]["test_images"] == 0
    assert all(
        v is None for k, v in scores["custom"].items() if k not in ("test_images", "per_target")
    )
    assert warning_lines(scores) == {}


def test_distinctness_is_the_mean_difference_over_pairs_of_translations() -> None:
    translations = torch.zeros(2, 3, 4)
    translations[0, 1] = 1.0  # face 0: targets 0 and 2 alike, 1 differs by 1 everywhere
    translations[1] = torch.tensor([0.0, 0.5, 1.0])[:, None]
    assert distinctness(translations).tolist() == pytest.approx([2 / 3, (0.5 + 1 + 0.5) / 3])


def _test_set(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_split(data, "test", CPU)
    return test.images, test.labels


def test_frechet_distance_matches_the_closed_form_for_an_affine_copy() -> None:
    a = torch.randn(400, 5, generator=torch.Generator().manual_seed(0)) @ torch.randn(5, 5)
    b = 2 * a + 3
    # S_b = 4 S_a, so tr(S_a + S_b - 2 (S_a S_b)^1/2) = tr(S_a) (1 + 4 - 4).
    cov_a = torch.cov(a.double().T)
    expected = (a.double().mean(0) - b.double().mean(0)).square().sum() + cov_a.trace()
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def model_dir(data: Path, params: Params, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StarGAN trained by the real train stage, with its MLflow run."""
    folder = tmp_path_factory.mktemp("train")
    train_stargan(
        params, data, folder / "stargan", folder / "ckpt", folder / "t.json", folder / "loss.csv"
    )
    return folder / "stargan"


def test_the_stage_scores_a_trained_model_and_logs_to_its_training_run(
    data: Path, params: Params, judge_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    metrics_path, confusion_path = tmp_path / "eval.json", tmp_path / "confusion.csv"
    summary_path = tmp_path / "summary.json"
    metrics = evaluate_translations(
        params, model_dir, judge_dir, data, metrics_path, summary_path, confusion_path
    )

    overall = metrics["overall"]
    assert overall["test_images"] == 4 * C and metrics["translations"] == C * 4 * C
    assert metrics["fer2013"]["test_images"] == metrics["custom"]["test_images"] == 2 * C
    assert json.loads(metrics_path.read_text()) == metrics
    summary = json.loads(summary_path.read_text())
    assert summary["custom"] == {
        "translated": metrics["custom"]["target_accuracy_changed"],
        "judge_real": metrics["custom"]["judge_accuracy_real"],
    }
    assert summary["faces"] == {"train": 20 * C, "test": 4 * C}
    assert summary["warnings"] == len(warning_lines(metrics))
    for scope in SCOPES:
        assert 0.0 <= metrics[scope]["target_accuracy"] <= 1.0 and metrics[scope]["keep_l1"] > 0
        assert metrics[scope]["fid_classifier"] > 0.0
        assert metrics[scope]["fid_classifier_real"] >= 0.0
    assert "fid_inception" not in overall  # no weights given
    with confusion_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["translations"]
    hits = sum(row["target"] == row["predicted"] for row in rows)
    assert hits / len(rows) == pytest.approx(overall["target_accuracy"], abs=1e-4)

    run_id = json.loads((model_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(params.mlflow.tracking_uri)
    run = client.get_run(run_id)
    logged = run.data.metrics
    assert logged["eval/overall/target_accuracy"] == overall["target_accuracy"]
    assert logged["eval/custom/judge_accuracy_real"] == metrics["custom"]["judge_accuracy_real"]
    happy = metrics["fer2013"]["per_target"]["happy"]
    assert logged["eval/fer2013/target_accuracy/happy"] == happy
    assert not any(key.endswith(("collapsed", "judge_fooled")) for key in logged)  # tags
    lines = "\n".join(warning_lines(metrics).values())
    assert run.data.tags["eval.warnings"] == (lines or "none")
    history = client.get_metric_history(run_id, "eval/overall/keep_l1")
    assert [m.step for m in history] == [params.train.num_iters]
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/confusion.csv"]
    # The test split it was scored on is part of the run's one dataset input, data/processed.
    assert [used.dataset.digest for used in run.inputs.dataset_inputs] == [dataset_hash(data)]
    registry = MlflowClient(params.mlflow.tracking_uri, registry_uri=params.mlflow.tracking_uri)
    [version] = registry.search_model_versions(f"name='{REGISTERED_MODEL}' and run_id='{run_id}'")
    fer = metrics["fer2013"]
    row = f"| fer2013 | {fer['target_accuracy_changed']:.3f} | {fer['judge_accuracy_real']:.3f} |"
    assert row in version.description and "Trained by run" in version.description


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file in the format of torch-fidelity's FID Inception v3, randomly initialised:
    the real one cannot be downloaded here, and the code path is the same."""
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None)
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for module in network.modules():
        if isinstance(module, nn.Conv2d):  # PyTorch's default init fades to 0 over 90 layers
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(network.state_dict(), path)
    return path


def test_local_inception_weights_add_the_standard_fid(
    data: Path, params: Params, judge_dir: Path, model_dir: Path, inception_weights: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    test = load_split(data, "test", CPU)
    same = InceptionFid(inception_weights, CPU)
    same.add(test.images, real=True)
    same.add(test.images, real=False)
    assert same.compute() == pytest.approx(0.0, abs=1e-2)

    evaluate = params.evaluate.model_copy(update={"inception_weights": inception_weights})
    with_fid = params.model_copy(update={"evaluate": evaluate})
    metrics = evaluate_translations(
        with_fid, model_dir, judge_dir, data, *(tmp_path / n for n in ("e.json", "s.json", "c.csv"))
    )
    assert metrics["overall"]["fid_inception"] > 1e-2  # translations are not the real faces


def test_missing_or_foreign_inception_weights_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(EmoganError, match=r"^evaluate.inception_weights: .*none.pth: no such file"):
        InceptionFid(tmp_path / "none.pth", CPU)
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(EmoganError, match=r"other.pth: not Inception v3 FID weights"):
        InceptionFid(tmp_path / "other.pth", CPU)
