"""MLflow tracking against real stores: a sqlite file, and a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from stargan_helpers import tiny_params, write_dataset

from emogan.config import MlflowConfig
from emogan.data.processed import from_pixels
from emogan.serving import REGISTERED_MODEL, FaceTranslator
from emogan.stargan.model import Generator
from emogan.stargan.train import train_stargan
from emogan.stargan.trained import CONFIG_FILE, GENERATOR_FILE, load_generator, translate_faces
from emogan.tracking import TrainingRun, flatten_params, git_commit, resolve_tracking_uri

PARAMS = {"layers": 3, "model": {"g_conv_dim": 4, "g_layers": None}, "train": {"g_lr": 1e-4}}
TAGS = {"git_commit": "abc123", "device": "cpu"}


def start(cfg: MlflowConfig, root: Path, run_id: str | None = None) -> TrainingRun:
    return TrainingRun.start(
        cfg, root, run_id=run_id, run_name="test-run", params=PARAMS, tags=TAGS
    )


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite store for the module: creating its tables takes seconds."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture
def cfg(request: pytest.FixtureRequest) -> MlflowConfig:
    return MlflowConfig(experiment=request.node.name)


@pytest.fixture
def client(store_root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{store_root / 'mlflow.db'}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tracking_uri_comes_from_config_then_environment_then_a_database_under_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert resolve_tracking_uri(MlflowConfig(tracking_uri="http://cfg:5000"), tmp_path) == (
        "http://cfg:5000"
    )
    assert resolve_tracking_uri(MlflowConfig(), tmp_path) == "http://from-env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    relative_root = Path(os.path.relpath(tmp_path))
    assert resolve_tracking_uri(MlflowConfig(), relative_root) == (
        f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    )


def test_git_commit_names_the_checkout_and_marks_uncommitted_changes(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "params.yaml").write_text("layers: 5\n")
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / "untracked.txt").write_text("not a change to the commit")
    assert git_commit(tmp_path) == head
    (tmp_path / "params.yaml").write_text("layers: 4\n")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_params_are_flattened_with_dotted_keys_and_cut_to_mlflows_limit() -> None:
    flat = flatten_params({"a": {"b": {"c": 1}}, "long": "x" * 7000, "none": None})
    assert flat == {"a.b.c": "1", "long": "x" * 6000, "none": "None"}


def test_a_run_records_params_tags_metrics_artifacts_and_a_loadable_generator(
    cfg: MlflowConfig,
    store_root: Path,
    client: MlflowClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = start(cfg, store_root)
    assert run.run_id is not None
    run.log_metrics({"G/loss": 1.5, "D/loss": float("nan")}, step=10)
    run.log_metrics({"G/loss": 0.5}, step=20)
    (tmp_path / "params.yaml").write_text("layers: 3\n")
    grids = tmp_path / "samples"
    grids.mkdir()
    (grids / "000010.png").write_bytes(b"png")
    run.log_artifact(tmp_path / "params.yaml")
    run.log_artifact(grids, artifact_path="figures")
    generator = Generator(1, 7, 4, 1)
    model_dir, config = _model_folder(tmp_path / "model", generator)
    # The user's own MLflow setting, which logging the generator must leave as it was.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    run.log_generator(model_dir, config, FACES[:1], cfg.experiment, "A tiny generator.")
    run.end()
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere.db'}"

    assert run.failures == 0
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.run_name == "test-run"
    assert client.get_experiment(logged.info.experiment_id).name == cfg.experiment
    assert logged.data.params == {
        "layers": "3",
        "model.g_conv_dim": "4",
        "model.g_layers": "None",
        "train.g_lr": "0.0001",
    }
    assert TAGS.items() <= logged.data.tags.items()
    history = client.get_metric_history(run.run_id, "G/loss")
    assert [(m.step, m.value) for m in history] == [(10, 1.5), (20, 0.5)]
    assert np.isnan(client.get_metric_history(run.run_id, "D/loss")[0].value)
    assert {a.path for a in client.list_artifacts(run.run_id)} >= {"params.yaml", "figures"}
    assert [a.path for a in client.list_artifacts(run.run_id, "figures/samples")] == [
        "figures/samples/000010.png"
    ]
    artifact_dir = Path(logged.info.artifact_uri.removeprefix("file://"))
    assert artifact_dir.is_relative_to(store_root / "mlruns")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{cfg.experiment}/1")
    assert np.array_equal(loaded.predict(FACES), _translations(generator, FACES))
    version = client.get_model_version(cfg.experiment, "1")
    assert version.run_id == run.run_id
    assert version.description.startswith("A tiny generator.\n\nTrained by run [test-run](#/")


def test_a_resumed_run_is_the_same_run_and_its_metrics_continue(
    cfg: MlflowConfig, store_root: Path, client: MlflowClient
) -> None:
    first = start(cfg, store_root)
    first.log_metrics({"G/loss": 2.0}, step=100)
    first.end("KILLED")
    assert client.get_run(first.run_id).info.status == "KILLED"

    resumed = start(cfg, store_root, run_id=first.run_id)
    assert resumed.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_metrics({"G/loss": 1.0}, step=200)
    resumed.end()

    assert resumed.failures == 0
    assert client.get_run(first.run_id).info.status == "FINISHED"
    history = client.get_metric_history(first.run_id, "G/loss")
    assert [(m.step, m.value) for m in history] == [(100, 2.0), (200, 1.0)]
    assert client.get_run(first.run_id).data.params["layers"] == "3"


def test_an_unknown_run_id_starts_a_new_run(
    cfg: MlflowConfig, store_root: Path, client: MlflowClient
) -> None:
    run = start(cfg, store_root, run_id="0" * 32)
    assert run.run_id not in (None, "0" * 32)
    assert client.get_run(run.run_id).info.status == "RUNNING"


def test_attach_adds_artifacts_to_a_finished_run_without_reopening_it(
    cfg: MlflowConfig, store_root: Path, client: MlflowClient, tmp_path: Path
) -> None:
    training = start(cfg, store_root)
    training.end()
    report = tmp_path / "eval.json"
    report.write_text("{}")

    evaluation = TrainingRun.attach(cfg, store_root, training.run_id)
    evaluation.log_artifact(report, artifact_path="metrics")
    evaluation.log_metrics({"eval/accuracy": 0.5}, step=0)

    assert evaluation.failures == 0
    finished = client.get_run(training.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics == {"eval/accuracy": 0.5}
    assert [a.path for a in client.list_artifacts(training.run_id, "metrics")] == [
        "metrics/eval.json"
    ]


def test_attach_to_a_missing_run_reports_one_line_and_does_nothing(
    cfg: MlflowConfig, store_root: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = TrainingRun.attach(cfg, store_root, "f" * 32)
    run.log_metrics({"eval/accuracy": 0.5}, step=0)

    assert run.run_id is None
    assert run.failures == 1
    report = capfd.readouterr().err.strip().splitlines()
    assert len(report) == 1
    assert "f" * 32 in report[0]


def test_a_disabled_run_has_no_id_and_does_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = TrainingRun.disabled()
    (tmp_path / "loss.csv").write_text("iteration\n")
    run.log_metrics({"G/loss": 1.0}, step=1)
    run.set_tags(TAGS)
    run.log_artifact(tmp_path / "loss.csv")
    run.describe_model(REGISTERED_MODEL, "a generator")
    run.end("KILLED")

    assert run.run_id is None and run.failures == 0
    assert capfd.readouterr().err == ""


QUIET_SCRIPT = """
import logging
import sys

import mlflow

names = ["mlflow.store.db.utils", "alembic", "mlflow.store.model_registry.abstract_store",
         "mlflow.pyfunc"]
levels = lambda: [logging.getLogger(name).level for name in names]
print(levels())
from emogan.config import MlflowConfig
from emogan.tracking import CHATTY_LOGGERS, TrainingRun

assert list(CHATTY_LOGGERS) == names
print(levels())
cfg = MlflowConfig(tracking_uri=sys.argv[1])
TrainingRun.start(cfg, ".", run_id=None, run_name="quiet", params={}, tags={})
print(levels())
"""


def test_importing_tracking_leaves_mlflows_loggers_and_opening_a_store_quiets_them(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-c", QUIET_SCRIPT, uri], capture_output=True, text=True, check=True
    )
    mlflows, imported, opened = done.stdout.splitlines()
    assert imported == mlflows  # as mlflow's import left them: mostly unset
    assert set(json.loads(opened)) == {logging.WARNING}
    assert done.stderr == ""  # creating the store's tables announced nothing
    assert (tmp_path / "mlflow.db").exists()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real tracking server with proxied artifacts, in its own process group."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1", "--serve-artifacts"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "artifacts")]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url, server
    finally:
        stop(server)


def wait_until_healthy(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"mlflow server at {url} did not come up")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def test_training_goes_on_when_the_tracking_server_dies(
    mlflow_server: tuple[str, subprocess.Popen[bytes]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, server = mlflow_server
    cfg = MlflowConfig(tracking_uri=url)
    run = start(cfg, tmp_path)
    run.log_metrics({"G/loss": 1.0, "D/loss": float("nan")}, step=1)
    (tmp_path / "params.yaml").write_text("layers: 3\n")
    run.log_artifact(tmp_path / "params.yaml")
    run.log_generator(*_model_folder(tmp_path / "model"), FACES[:1], "over-http", "Tiny.")
    remote = MlflowClient(url)
    assert run.failures == 0
    assert [a.path for a in remote.list_artifacts(run.run_id)] == ["params.yaml"]
    assert capfd.readouterr().err == ""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    loaded = mlflow.pyfunc.load_model("models:/over-http/1").unwrap_python_model()
    assert isinstance(loaded, FaceTranslator)
    capfd.readouterr()  # the download's progress bar

    stop(server)
    run.log_metrics({"G/loss": 0.5}, step=2)
    run.log_metrics({"G/loss": 0.25}, step=3)
    run.end()

    assert run.failures == 3
    report = capfd.readouterr().err.strip().splitlines()
    assert len(report) == 1
    assert url in report[0]


def test_an_unreachable_server_at_start_gives_a_run_without_id_quickly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    run = start(MlflowConfig(tracking_uri=url), tmp_path)
    run.log_metrics({"G/loss": 1.0}, step=1)
    run.end()

    assert time.monotonic() - began < 20
    assert run.run_id is None
    assert run.failures == 1
    report = capfd.readouterr().err.strip().splitlines()
    assert len(report) == 1
    assert url in report[0]
    assert "Connection refused" in report[0]


def test_a_store_that_cannot_be_opened_gives_one_line_and_a_run_without_id(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = start(MlflowConfig(tracking_uri="nosuch://store"), tmp_path)
    run.log_metrics({"G/loss": 1.0}, step=1)
    run.end()

    assert run.run_id is None and run.failures == 1
    report = capfd.readouterr().err.strip().splitlines()
    assert len(report) == 1 and "nosuch://store" in report[0]


def test_a_training_against_a_team_server_is_tracked_whole_over_http(
    mlflow_server: tuple[str, subprocess.Popen[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The team set-up of docs/remote.md: a real training, every byte through the server."""
    url, _ = mlflow_server
    monkeypatch.chdir(tmp_path)  # the project root of the training: nothing of it lands here
    monkeypatch.delenv("DVC_ROOT", raising=False)
    data = write_dataset(tmp_path / "processed")
    out = tmp_path / "out"
    metrics = train_stargan(
        tiny_params(url),
        data,
        out,
        tmp_path / "ckpt",
        tmp_path / "train.json",
        tmp_path / "loss.csv",
    )

    client = MlflowClient(url, registry_uri=url)
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["tracking_uri"] == url
    run = client.get_run(recorded["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert (run.data.params["layers"], run.data.params["num_iters"]) == ("1", "8")
    assert run.data.tags["device"] == "cpu"
    assert run.data.tags["fingerprint"] == recorded["fingerprint"]
    history = client.get_metric_history(run.info.run_id, "G/loss_rec")
    assert [m.step for m in history] == [3, 6, 8]
    assert history[-1].value == pytest.approx(metrics["G/loss_rec"])
    logged = {a.path for folder in (None, "samples", "checkpoint")
              for a in client.list_artifacts(run.info.run_id, folder)}  # fmt: skip
    assert {"samples/iter_4.png", "samples/iter_8.png", "loss.csv", "params.yaml",
            "checkpoint/checkpoint.pt"} <= logged  # fmt: skip
    # --serve-artifacts: the client sent the files to the server, which keeps them on its disk.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    on_server = {path.name for path in (tmp_path / "artifacts").rglob("*") if path.is_file()}
    assert {"iter_8.png", "loss.csv", "params.yaml", "checkpoint.pt"} <= on_server

    [version] = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    assert version.run_id == run.info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    served = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}/{version.version}")
    trained, _ = load_generator(out)
    assert np.array_equal(served.predict(FACES), _translations(trained, FACES))


FACES = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)


def _model_folder(folder: Path, generator: Generator | None = None) -> tuple[Path, dict]:
    """A train stage folder of a tiny generator of 16 px gray faces, and its config."""
    folder.mkdir()
    config = {"channels": 1, "c_dim": 7, "g_conv_dim": 4, "g_layers": 1, "image_size": 16}
    torch.save((generator or Generator(1, 7, 4, 1)).state_dict(), folder / GENERATOR_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder, config


def _translations(generator: Generator, faces: np.ndarray) -> np.ndarray:
    """What the model must answer by default: N x 7 x S x S, emogan's own translations."""
    x = from_pixels(torch.from_numpy(faces))[:, None]
    return np.stack([translate_faces(generator, x, t)[..., 0] for t in range(7)], 1)
