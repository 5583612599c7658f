"""The classifier stage: fits on train alone, picks its epoch on validation, scores test."""

import csv
import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from stargan_helpers import SIZE, tiny_params, write_dataset

import emogan.classifier
from emogan.classifier import (
    build_classifier,
    classify,
    load_classifier,
    stratified_split,
    train_classifier,
)
from emogan.config import Params
from emogan.data.processed import load_split
from emogan.emotions import EMOTIONS
from emogan.progress import STAGE_TIMING

TRAIN_PER_EMOTION, TEST_PER_EMOTION = 20, 4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), TRAIN_PER_EMOTION, TEST_PER_EMOTION)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module, one experiment per test: creating it takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _params(store: str, experiment: str, **classifier: object) -> Params:
    params = tiny_params(store)
    cfg = {"epochs": 6, "batch_size": 16, "val_fraction": 0.25, "device": "cpu", **classifier}
    return params.model_copy(
        update={
            "classifier": params.classifier.model_copy(update=cfg),
            "mlflow": params.mlflow.model_copy(update={"experiment": experiment}),
        }
    )


def _run(params: Params, data: Path, folder: Path) -> dict:
    return train_classifier(
        params, data, folder / "model", folder / "metrics.json", folder / "confusion.csv"
    )


@pytest.fixture(scope="module")
def staged(data: Path, store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The stage run once, in experiment "staged": its output folder and metrics."""
    folder = tmp_path_factory.mktemp("staged")
    return folder, _run(_params(store, "staged"), data, folder)


@pytest.mark.parametrize(("channels", "size"), [(1, 16), (3, 48), (1, 37)])
def test_the_network_takes_any_size_and_channels(channels: int, size: int) -> None:
    logits = build_classifier(channels, width=4)(torch.rand(2, channels, size, size))
    assert logits.shape == (2, len(EMOTIONS))


def test_the_validation_share_is_stratified_disjoint_and_seeded() -> None:
    labels = torch.arange(len(EMOTIONS)).repeat_interleave(10)
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[val]).tolist() == [2] * len(EMOTIONS)
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(len(labels)))
    assert torch.equal(val, stratified_split(labels, 0.2, seed=0)[1])
    assert not torch.equal(val, stratified_split(labels, 0.2, seed=1)[1])


def test_the_stage_writes_its_outputs_and_learns(staged: tuple[Path, dict], data: Path) -> None:
    folder, metrics = staged
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"test_accuracy", "val_accuracy", "recall", "best_epoch", "epochs",
                            "train_s", "train_images", "val_images", "test_images",
                            STAGE_TIMING}  # fmt: skip
    assert set(metrics["recall"]) == set(EMOTIONS)
    assert metrics["val_accuracy"] >= 0.9, metrics
    assert metrics["test_accuracy"] >= 0.9, metrics
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] == 6
    assert metrics["val_images"] == len(EMOTIONS) * 5
    assert metrics["train_images"] == len(EMOTIONS) * (TRAIN_PER_EMOTION - 5)
    assert json.loads((folder / "model" / "config.json").read_text()) == {
        "channels": 1, "image_size": SIZE, "width": 32
    }  # fmt: skip
    test = load_split(data, "test", CPU)
    model = load_classifier(folder / "model", CPU)
    accuracy = (classify(model, test.images) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_the_confusion_csv_has_one_row_per_test_image(staged: tuple[Path, dict]) -> None:
    folder, metrics = staged
    with (folder / "confusion.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["actual", "predicted"]
    assert len(rows) == metrics["test_images"] == len(EMOTIONS) * TEST_PER_EMOTION
    assert sorted(row["actual"] for row in rows) == sorted(EMOTIONS * TEST_PER_EMOTION)
    hits = sum(row["actual"] == row["predicted"] for row in rows)
    assert hits / len(rows) == pytest.approx(metrics["test_accuracy"], abs=1e-4)


def test_fitting_and_epoch_choice_never_see_a_test_image(
    tmp_path: Path, data: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    fit = emogan.classifier.fit_with_validation

    def spy(train, val, cfg, device):  # type: ignore[no-untyped-def]
        seen.extend([train.images, val.images])
        return fit(train, val, cfg, device)

    monkeypatch.setattr(emogan.classifier, "fit_with_validation", spy)
    _run(_params(store, "spied"), data, tmp_path)

    def rows(images: torch.Tensor) -> set[bytes]:
        return {image.numpy().tobytes() for image in images}

    given = rows(torch.cat(seen))
    assert given == rows(load_split(data, "train", CPU).images)
    assert not given & rows(load_split(data, "test", CPU).images)


def test_without_validation_the_last_epoch_is_kept(tmp_path: Path, data: Path, store: str) -> None:
    metrics = _run(_params(store, "unvalidated", val_fraction=0.0), data, tmp_path)
    assert metrics["val_accuracy"] is None
    assert metrics["best_epoch"] == metrics["epochs"]
    assert metrics["val_images"] == 0


def test_the_stage_is_tracked_in_its_own_mlflow_run(staged: tuple[Path, dict], store: str) -> None:
    metrics = staged[1]
    client = MlflowClient(store)
    [run] = client.search_runs(client.get_experiment_by_name("staged").experiment_id)
    assert run.info.run_name == "classifier"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["recall/happy"] == pytest.approx(metrics["recall"]["happy"])
    assert run.data.params["val_fraction"] == "0.25"
    assert run.data.params["image_size"] == str(SIZE)
    assert "data_hash" in run.data.tags
    artifacts = [entry.path for entry in client.list_artifacts(run.info.run_id)]
    assert artifacts == ["confusion.csv"]
