"""The train stage on a tiny dataset: outputs, MLflow run, resume, SIGTERM, divergence."""

import getpass
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from stargan_helpers import tiny_params, write_dataset

from emogan.bench.train import official_iteration
from emogan.config import Params
from emogan.data.processed import Dataset, dataset_hash, dataset_profile, load_split
from emogan.errors import EmoganError
from emogan.progress import STAGE_TIMING
from emogan.serving import REGISTERED_MODEL
from emogan.stargan import train as train_module
from emogan.stargan.model import Discriminator, Generator
from emogan.stargan.train import (
    LOSS_NAMES,
    Networks,
    build_networks,
    draw_targets,
    logged_losses,
    sample_batch,
    train_iteration,
    train_stargan,
)
from emogan.tracking import load_logged_generator


@dataclass
class Paths:
    out: Path
    checkpoints: Path
    metrics: Path
    loss_log: Path

    @classmethod
    def under(cls, folder: Path) -> "Paths":
        return cls(folder / "out", folder / "ckpt", folder / "train.json", folder / "loss.csv")


def _train(params: Params, data: Path, paths: Paths) -> dict:
    return train_stargan(params, data, paths.out, paths.checkpoints, paths.metrics, paths.loss_log)


def _checkpoints(paths: Paths) -> list[Path]:
    return sorted(paths.checkpoints.glob("*/checkpoint.pt"))


def _train_until_sigterm(params: Params, data: Path, paths: Paths, iterations: int) -> None:
    """Train until a real SIGTERM, delivered to this process during iteration `iterations`,
    stops it with a checkpoint."""
    real = train_module.train_iteration

    def iteration_then_sigterm(nets, x, labels, cfg, iteration, generator):
        losses = real(nets, x, labels, cfg, iteration, generator)
        if iteration + 1 == iterations:
            signal.raise_signal(signal.SIGTERM)
        return losses

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "train_iteration", iteration_then_sigterm)
        stopped = f"stopped by SIGTERM at iteration {iterations}; checkpoint written"
        with pytest.raises(EmoganError, match=stopped):
            _train(params, data, paths)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("processed"))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def straight(data: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """One uninterrupted run of the tiny configuration."""
    paths = Paths.under(tmp_path_factory.mktemp("straight"))
    _train(tiny_params(tracking_uri), data, paths)
    return paths


def test_outputs_load_and_the_checkpoint_is_gone_after_success(straight: Paths) -> None:
    config = json.loads((straight.out / "config.json").read_text())
    assert config["channels"] == 1 and config["image_size"] == 16 and config["c_dim"] == 7
    assert (config["g_layers"], config["d_layers"], config["g_conv_dim"]) == (1, 1, 4)
    assert config["num_iters"] == 8 and config["lambda_gp"] == 10.0
    G = Generator(1, 7, config["g_conv_dim"], config["g_layers"])
    G.load_state_dict(torch.load(straight.out / "generator.pt", weights_only=True))
    D = Discriminator(1, 16, 7, config["d_conv_dim"], config["d_layers"])
    D.load_state_dict(torch.load(straight.out / "discriminator.pt", weights_only=True))
    run = json.loads((straight.out / "run.json").read_text())
    assert set(run) == {"mlflow_run_id", "tracking_uri", "fingerprint"} and run["mlflow_run_id"]

    metrics = json.loads(straight.metrics.read_text())
    assert set(metrics) == {"iterations", "resumed_from", "wall_s", "iterations_per_s", "device",
                            *LOSS_NAMES, STAGE_TIMING}  # fmt: skip
    assert (metrics["iterations"], metrics["resumed_from"], metrics["device"]) == (8, 0, "cpu")
    rows = straight.loss_log.read_text().splitlines()
    assert rows[0].split(",") == ["iteration", *LOSS_NAMES]
    assert [row.split(",")[0] for row in rows[1:]] == ["3", "6", "8"]  # log_step 3, then the end
    assert float(rows[-1].split(",")[1]) == metrics["D/loss_real"]
    assert _checkpoints(straight) == []  # the finished run's checkpoint went to MLflow


def test_the_mlflow_run_has_params_tags_metrics_artifacts_and_the_model(
    straight: Paths, data: Path, tracking_uri: str
) -> None:
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    run_id = json.loads((straight.out / "run.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["layers"], params["g_layers"], params["d_conv_dim"]) == ("1", "1", "4")
    assert (params["num_iters"], params["image_size"], params["channels"]) == ("8", "16", "1")
    tags = run.data.tags
    assert tags["device"] == "cpu" and tags["torch_version"] == torch.__version__
    assert tags["data_hash"] == dataset_hash(data) and tags["mlflow.source.git.commit"]
    assert (tags["mlflow.source.name"], tags["mlflow.user"]) == ("emogan train", getpass.getuser())
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # training runs
    [used] = run.inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest) == (data.as_posix(), dataset_hash(data))
    assert json.loads(used.dataset.profile) == dataset_profile(data)
    assert [(tag.key, tag.value) for tag in used.tags] == [("mlflow.data.context", "training")]
    history = client.get_metric_history(run_id, "D/loss_gp")
    assert [metric.step for metric in history] == [3, 6, 8]
    assert [m.step for m in client.get_metric_history(run_id, "G/loss_rec")] == [3, 6, 8]
    artifacts = {a.path for folder in (None, "samples", "checkpoint")
                 for a in client.list_artifacts(run_id, folder)}  # fmt: skip
    assert {"samples/iter_4.png", "samples/iter_8.png", "loss.csv", "params.yaml",
            "checkpoint/checkpoint.pt"} <= artifacts  # fmt: skip
    [version] = client.search_model_versions(f"name='{REGISTERED_MODEL}' and run_id='{run_id}'")
    assert version.description.startswith("StarGAN generator: 1 residual blocks in G, 1 strided")
    assert f"#/experiments/{run.info.experiment_id}/runs/{run_id}" in version.description


def test_a_sigterm_stop_and_resume_equals_the_straight_run(
    straight: Paths,
    data: Path,
    tracking_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = Paths.under(tmp_path)
    handler = signal.getsignal(signal.SIGTERM)
    _train_until_sigterm(tiny_params(tracking_uri), data, paths, 4)  # after the checkpoint at 3
    assert signal.getsignal(signal.SIGTERM) is handler
    assert len(_checkpoints(paths)) == 1
    run_id = torch.load(_checkpoints(paths)[0], weights_only=True)["progress"]["run_id"]
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "KILLED"

    capsys.readouterr()
    assert _train(tiny_params(tracking_uri), data, paths)["resumed_from"] == 4
    assert "resuming from iteration 4\n" in capsys.readouterr().err
    assert json.loads((paths.out / "run.json").read_text())["mlflow_run_id"] == run_id
    for name in ("generator.pt", "discriminator.pt"):
        resumed = torch.load(paths.out / name, weights_only=True)
        straight_run = torch.load(straight.out / name, weights_only=True)
        assert all(torch.equal(resumed[key], straight_run[key]) for key in straight_run), name
    assert paths.loss_log.read_text() == straight.loss_log.read_text()


def test_another_configuration_starts_afresh_and_how_it_runs_resumes(
    data: Path,
    tracking_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = Paths.under(tmp_path)
    _train_until_sigterm(tiny_params(tracking_uri), data, paths, 3)
    [first] = _checkpoints(paths)
    saved = first.read_bytes()

    capsys.readouterr()
    _train_until_sigterm(tiny_params(tracking_uri, layers=2), data, paths, 1)
    assert "resuming" not in capsys.readouterr().err
    assert len(_checkpoints(paths)) == 2 and first.read_bytes() == saved

    # How often to log, sample and checkpoint does not change the weights: this resumes.
    watched = tiny_params(tracking_uri, log_step=1, sample_step=2, checkpoint_step=5)
    _train_until_sigterm(watched, data, paths, 4)
    assert "resuming from iteration 3\n" in capsys.readouterr().err
    assert len(_checkpoints(paths)) == 2

    # Nor does compiling G; the compiled run's generator is logged and loads as a plain one.
    _train(tiny_params(tracking_uri, compile=True), data, paths)
    assert "resuming from iteration 4\n" in capsys.readouterr().err
    G = Generator(1, 7, 4, 1)
    G.load_state_dict(torch.load(paths.out / "generator.pt", weights_only=True))
    run_id = json.loads((paths.out / "run.json").read_text())["mlflow_run_id"]
    logged, _ = load_logged_generator(f"runs:/{run_id}/generator", tracking_uri)
    x, c = torch.rand(2, 1, 16, 16) * 2 - 1, torch.eye(7)[:2]
    with torch.no_grad():
        torch.testing.assert_close(logged(x, c), G(x, c), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("log_step", "num_iters", "caught_at"),
    [(2, 8, "5-6"), (12, 12, "5-8")],  # at a log step; at a checkpoint before any log step
)
def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    log_step: int,
    num_iters: int,
    caught_at: str,
    data: Path,
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = train_module.sample_batch
    batches = 0

    def nan_images_after_4(*args):
        nonlocal batches
        batches += 1
        x, labels = real(*args)
        return (x * float("nan") if batches > 4 else x), labels

    monkeypatch.setattr(train_module, "sample_batch", nan_images_after_4)
    params = tiny_params(tracking_uri, log_step=log_step, num_iters=num_iters, checkpoint_step=4)
    paths = Paths.under(tmp_path)
    with pytest.raises(EmoganError) as caught:
        _train(params, data, paths)
    [kept] = _checkpoints(paths)
    assert str(caught.value) == (
        f"train: D/loss_real is NaN or infinite in iterations {caught_at}; the last good "
        f"checkpoint (iteration 4) is kept at {kept}; "
        "lower train.g_lr / train.d_lr or check the data"
    )
    state = torch.load(kept, weights_only=True)
    assert state["progress"]["iteration"] == 4
    assert all(value.isfinite().all() for value in state["state_dicts"]["G"].values())
    run_id = state["progress"]["run_id"]
    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FAILED"


def test_missing_data_says_to_run_merge(tracking_uri: str, tmp_path: Path) -> None:
    with pytest.raises(EmoganError, match=r"index.csv: not found \(run the merge stage first\)"):
        _train(tiny_params(tracking_uri), tmp_path / "processed", Paths.under(tmp_path))


def test_images_of_another_shape_are_refused(data: Path, tracking_uri: str, tmp_path: Path) -> None:
    params = tiny_params(tracking_uri)
    rgb = params.model_copy(update={"merge": params.merge.model_copy(update={"channels": 3})})
    with pytest.raises(EmoganError, match=r"images are 1x16x16 .* but params.yaml expects 3x16x16"):
        _train(rgb, data, Paths.under(tmp_path))


def test_sigterm_to_emogan_train_exits_non_zero_and_a_rerun_resumes(
    data: Path, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = Paths.under(tmp_path)
    command = [
        Path(sys.executable).with_name("emogan"), "train", "--data", data,
        "--out", paths.out, "--checkpoints", paths.checkpoints,
        "--metrics", paths.metrics, "--loss-log", paths.loss_log,
    ]  # fmt: skip
    env = {**os.environ, "DVC_ROOT": str(tmp_path)}
    # Logging and drawing a grid every iteration make the first run slow enough to catch;
    # they do not change the weights, so the faster second run resumes its checkpoint.
    slow = tiny_params(tracking_uri, num_iters=300, log_step=1, sample_step=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(slow.model_dump(mode="json")))
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (paths.loss_log.exists() and len(paths.loss_log.read_text().splitlines()) > 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]

    assert process.returncode != 0, stderr
    assert "emogan: error: train: stopped by SIGTERM at iteration " in stderr
    [checkpoint] = _checkpoints(paths)
    assert f"; checkpoint written to {checkpoint}; run the stage again to resume" in stderr
    stopped_at = torch.load(checkpoint, weights_only=True)["progress"]["iteration"]
    assert 2 <= stopped_at < 300

    capsys.readouterr()
    faster = tiny_params(tracking_uri, num_iters=300, log_step=50, sample_step=300)
    assert _train(faster, data, paths)["resumed_from"] == stopped_at
    assert f"resuming from iteration {stopped_at}\n" in capsys.readouterr().err


THREE_G_STEPS = {"layers": 2, "n_critic": 2, "batch_size": 6}  # over _six_iterations


def _six_iterations(
    params: Params, train: Dataset, official: bool = False
) -> tuple[list[dict[str, torch.Tensor]], Networks]:
    """Six iterations of the fast path, or of the official order on plainly built networks."""
    torch.manual_seed(0)
    nets = build_networks(params, train, fast=not official)
    step = official_iteration if official else train_iteration
    generator = torch.Generator().manual_seed(0)
    losses = []
    for i in range(6):
        x, labels = sample_batch(train, params.train.batch_size, generator)
        losses.append(step(nets, x, labels, params.train, i, generator))
    return losses, nets


@pytest.mark.parametrize("compiled", [False, True], ids=["plain", "compiled"])
def test_the_fast_path_gives_the_official_orders_losses_and_weights(
    data: Path, compiled: bool
) -> None:
    params = tiny_params("sqlite:///unused.db", **THREE_G_STEPS, precision="fp32", compile=compiled)
    train = load_split(data, "train", torch.device("cpu"))
    eager_losses, eager = _six_iterations(params, train, official=True)
    fast_losses, fast = _six_iterations(params, train)
    assert (vars(fast.G).get("_compiled_call_impl") is not None) == compiled  # Module.compile()
    for eager_step, fast_step in zip(eager_losses, fast_losses, strict=True):
        assert eager_step.keys() == fast_step.keys()
        for name, value in eager_step.items():
            torch.testing.assert_close(fast_step[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # Adam moves a weight by about lr per step whatever the size of its gradient, so a gradient
    # that is exactly 0 in one path and 1e-10 in the other (the label channels of emotions no
    # face in the batch has) may end a few lr apart; the other weights agree to float precision,
    # or, compiled (inductor sums InstanceNorm's statistics in another order), to lr / 10.
    steps, close = len(fast_losses), 1e-5 if compiled else 1e-6
    for net in ("G", "D"):
        eager_weights = torch.cat([w.flatten() for w in getattr(eager, net).parameters()])
        fast_weights = torch.cat([w.flatten() for w in getattr(fast, net).parameters()])
        apart = (fast_weights - eager_weights).abs()
        assert apart.max() <= steps * params.train.g_lr, net
        assert (apart > close).float().mean() < 0.05, net
    assert fast.G.state_dict().keys() == eager.G.state_dict().keys()  # checkpoints load either way


def test_bf16_runs_the_passes_in_bf16_and_keeps_float32_weights(data: Path) -> None:
    params = tiny_params("sqlite:///unused.db", **THREE_G_STEPS, precision="fp32")
    bf16 = tiny_params("sqlite:///unused.db", **THREE_G_STEPS, precision="bf16")
    train = load_split(data, "train", torch.device("cpu"))
    fp32_losses, _ = _six_iterations(params, train)
    bf16_losses, nets = _six_iterations(bf16, train)
    eager_losses, _ = _six_iterations(bf16, train, official=True)  # always float32
    first = [(fp32_losses[0][name], bf16_losses[0][name]) for name in fp32_losses[0]]
    assert any(not torch.equal(a, b) for a, b in first)  # rounded to bf16's 8 bits...
    for a, b in first:
        torch.testing.assert_close(b, a, rtol=0.05, atol=0.02)  # ...yet the same losses
    assert all(v.dtype == torch.float32 for step in bf16_losses for v in step.values())
    assert all(w.dtype == torch.float32 for w in (*nets.G.parameters(), *nets.D.parameters()))
    for fp32_step, eager_step in zip(fp32_losses, eager_losses, strict=True):
        for name, value in eager_step.items():
            torch.testing.assert_close(fp32_step[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("native", [True, False], ids=["avx512-bf16", "avx2-only"])
def test_bf16_on_a_cpu_that_emulates_it_says_to_use_fp32(
    native: bool,
    data: Path,
    tracking_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    params = tiny_params(tracking_uri, precision="bf16", num_iters=2, num_iters_decay=0)
    _train(params, data, Paths.under(tmp_path))
    warned = "emogan: train.precision: bf16 is emulated on cpu" in capsys.readouterr().err
    assert warned != native


def test_the_identity_loss_is_computed_and_trained_only_when_weighted(data: Path) -> None:
    train = load_split(data, "train", torch.device("cpu"))
    weights = {}
    for lambda_id in (0.0, 5.0):
        params = tiny_params("sqlite:///unused.db", n_critic=1, lambda_id=lambda_id)
        torch.manual_seed(0)
        nets = build_networks(params, train)
        generator = torch.Generator().manual_seed(0)
        x, labels = sample_batch(train, params.train.batch_size, generator)
        losses = train_iteration(nets, x, labels, params.train, 0, generator)
        assert ("G/loss_id" in losses) == (lambda_id > 0)
        assert set(losses) == set(logged_losses(params.train))
        weights[lambda_id] = nets
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights[0.0].D.parameters(), weights[5.0].D.parameters(), strict=True)
    )  # D's update comes first, before G's losses differ
    assert not all(
        torch.equal(a, b)
        for a, b in zip(weights[0.0].G.parameters(), weights[5.0].G.parameters(), strict=True)
    )


def test_compile_without_a_cpp_compiler_trains_g_uncompiled_and_says_so(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "no-such-c++"))
    params = tiny_params("sqlite:///unused.db", compile=True)
    train = load_split(data, "train", torch.device("cpu"))
    nets = build_networks(params, train)
    assert vars(nets.G).get("_compiled_call_impl") is None
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "emogan: train.compile: no C++ compiler found (no-such-c++; set $CXX), which "
        "torch.compile needs on the CPU; training G uncompiled"
    ]
    x, labels = sample_batch(train, params.train.batch_size, torch.Generator().manual_seed(0))
    train_iteration(nets, x, labels, params.train, 0, torch.Generator().manual_seed(0))


def test_uniform_targets_give_every_emotion_alike_and_shuffled_ones_follow_the_labels() -> None:
    """Over many batches of FER2013-like labels (disgust rare): uniform draws every emotion
    about 1/7 of the time, the official shuffle only as often as the batch holds it."""
    labels = torch.tensor([0] * 6 + [1] * 1 + [3] * 9)  # one disgust face in 16
    generator = torch.Generator().manual_seed(0)
    batches = 3000
    for sampling, expected in (
        ("uniform", torch.full((7,), 1 / 7)),
        ("shuffle", torch.bincount(labels, minlength=7) / len(labels)),
    ):
        drawn = torch.cat([draw_targets(labels, sampling, generator) for _ in range(batches)])
        share = torch.bincount(drawn, minlength=7) / len(drawn)
        # 48,000 draws: a share's standard error is below 0.002.
        assert torch.allclose(share, expected, atol=0.01), (sampling, share)
    shuffled = draw_targets(labels, "shuffle", generator)
    assert sorted(shuffled.tolist()) == sorted(labels.tolist())  # a permutation of the batch


def test_batches_by_emotion_show_a_rare_emotion_as_often_as_any() -> None:
    """A dataset with one disgust face among 100: by images, batches hold it 1% of the time;
    by emotions, 1/3 (three emotions present), the one face repeated."""
    labels = torch.tensor([0] * 60 + [1] * 1 + [3] * 39)
    images = torch.arange(100.0).reshape(100, 1, 1, 1).expand(100, 1, 2, 2)
    data = Dataset(images, labels, torch.zeros_like(labels))
    generator = torch.Generator().manual_seed(0)
    for sampling, expected in (
        ("images", torch.bincount(labels, minlength=7) / len(labels)),
        ("emotions", torch.tensor([1, 1, 0, 1, 0, 0, 0]) / 3),
    ):
        drawn = [sample_batch(data, 16, generator, sampling) for _ in range(3000)]
        share = torch.bincount(torch.cat([batch_labels for _, batch_labels in drawn]), minlength=7)
        assert torch.allclose(share / share.sum(), expected, atol=0.01), (sampling, share)
        images, batch_labels = drawn[0]
        assert torch.equal(labels[images[:, 0, 0, 0].long()], batch_labels)  # image with its label
