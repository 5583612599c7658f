"""Data-parallel training: `torchrun --nproc_per_node=2 -m emogan train` on the CPU (gloo), and
gradient averaging against the gradient of the averaged loss."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from mlflow import MlflowClient
from stargan_helpers import tiny_params, write_dataset

from emogan.config import Params
from emogan.stargan.distributed import World, average_on_step
from emogan.stargan.train import gradient_penalty

# torchrun's worker in place of `-m emogan`: the real CLI, with what the tests compare recorded
# in $EMOGAN_TEST_CAPTURE/rank<RANK>.pt: this rank's first batch and its final weights.
# $EMOGAN_TEST_NAN_RANK makes that rank's batches NaN from the 5th on.
CAPTURE_SCRIPT = """
import os
from pathlib import Path

import torch

from emogan.cli import main
from emogan.stargan import train

rank = int(os.environ["RANK"])
built, batches = [], []
build_networks, sample_batch = train.build_networks, train.sample_batch


def capture_networks(*args, **kwargs):
    built.append(build_networks(*args, **kwargs))
    return built[-1]


def capture_batch(*args, **kwargs):
    x, labels = sample_batch(*args, **kwargs)
    batches.append(x.clone() if not batches else None)
    if str(rank) == os.environ.get("EMOGAN_TEST_NAN_RANK") and len(batches) > 4:
        x = x * float("nan")
    return x, labels


train.build_networks, train.sample_batch = capture_networks, capture_batch
try:
    main()
finally:
    state = {"G": built[0].G.state_dict(), "D": built[0].D.state_dict(), "batch": batches[0]}
    torch.save(state, Path(os.environ["EMOGAN_TEST_CAPTURE"]) / f"rank{rank}.pt")
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("processed"))


def _tracking_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _torchrun(
    folder: Path, data: Path, params: Params, entry: list[str], **env: str
) -> subprocess.Popen:
    """Start torchrun with 2 CPU workers running `entry ... train` on data, outputs in folder."""
    params_file = folder / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        *entry, "--params", params_file, "train", "--data", data, "--out", folder / "out",
        "--checkpoints", folder / "ckpt", "--metrics", folder / "train.json",
        "--loss-log", folder / "loss.csv",
    ]  # fmt: skip
    env = {**os.environ, "DVC_ROOT": str(folder), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        command, cwd=folder, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(process: subprocess.Popen, timeout: float = 90) -> str:
    """stderr, once the process has ended; kills its process group if it hangs."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise


def _capture(folder: Path, data: Path, params: Params, **env: str) -> subprocess.Popen:
    script = folder / "capture.py"
    script.write_text(CAPTURE_SCRIPT)
    return _torchrun(folder, data, params, [str(script)], EMOGAN_TEST_CAPTURE=str(folder), **env)


def _only_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return client, runs[0]


def _checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / "ckpt").glob("*/checkpoint.pt"))


def test_two_ranks_train_one_run_with_identical_weights(data: Path, tmp_path: Path) -> None:
    tracking_uri = _tracking_uri(tmp_path)
    process = _capture(tmp_path, data, tiny_params(tracking_uri))
    stderr = _finish(process)
    assert process.returncode == 0, stderr

    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # Different batches and equal weights: only averaged gradients give both.
    assert not torch.equal(rank0["batch"], rank1["batch"])
    for net in ("G", "D"):
        assert rank0[net].keys() == rank1[net].keys()
        for key in rank0[net]:
            assert torch.equal(rank0[net][key], rank1[net][key]), f"{net}.{key}"
    saved = torch.load(tmp_path / "out" / "generator.pt", weights_only=True)
    assert all(torch.equal(saved[key], rank0["G"][key]) for key in saved)

    client, run = _only_run(tracking_uri)
    assert run.info.status == "FINISHED"
    assert (run.data.params["layers"], run.data.params["num_iters"]) == ("1", "8")
    assert run.data.tags["world_size"] == "2"
    history = client.get_metric_history(run.info.run_id, "D/loss_gp")
    assert [metric.step for metric in history] == [3, 6, 8]  # logged once, not once per rank
    assert json.loads((tmp_path / "out" / "run.json").read_text())["mlflow_run_id"] == (
        run.info.run_id
    )
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["3", "6", "8"]
    real = client.get_metric_history(run.info.run_id, "D/loss_real")
    assert float(rows[-1].split(",")[1]) == real[-1].value  # the average over both ranks
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert (metrics["iterations"], metrics["resumed_from"]) == (8, 0)
    assert _checkpoints(tmp_path) == []
    assert "resuming" not in stderr


def test_sigterm_to_torchrun_stops_both_ranks_and_a_rerun_resumes(
    data: Path, tmp_path: Path
) -> None:
    tracking_uri = _tracking_uri(tmp_path)
    # A grid and a log row every iteration make the first run slow enough to catch; they do
    # not change the weights, so the faster second run resumes its checkpoint.
    slow = tiny_params(tracking_uri, num_iters=300, log_step=1, sample_step=1)
    process = _torchrun(tmp_path, data, slow, ["-m", "emogan"])
    loss_log = tmp_path / "loss.csv"
    deadline = time.monotonic() + 60
    while not (loss_log.exists() and len(loss_log.read_text().splitlines()) > 3):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"training ended or did not start: {_finish(process)}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    stderr = _finish(process)

    assert process.returncode != 0, stderr
    [checkpoint] = _checkpoints(tmp_path)
    state = torch.load(checkpoint, weights_only=True)
    stopped_at = state["progress"]["iteration"]
    assert 3 <= stopped_at < 300
    # Both ranks left the loop at the same iteration, after rank 0 wrote it.
    message = f"emogan: error: train: stopped by SIGTERM at iteration {stopped_at}; checkpoint"
    assert stderr.count(message) == 2, stderr
    client, run = _only_run(tracking_uri)
    assert run.info.run_id == state["progress"]["run_id"] and run.info.status == "KILLED"

    faster = tiny_params(tracking_uri, num_iters=300, log_step=50, sample_step=300)
    process = _torchrun(tmp_path, data, faster, ["-m", "emogan"])
    stderr = _finish(process)
    assert process.returncode == 0, stderr
    assert stderr.count(f"resuming from iteration {stopped_at}\n") == 1, stderr  # rank 0 only
    assert json.loads((tmp_path / "train.json").read_text())["resumed_from"] == stopped_at
    client, resumed = _only_run(tracking_uri)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "D/loss_real")]
    assert steps == sorted(set(steps)) and steps[-1] == 300


def test_a_nan_on_one_rank_stops_both(data: Path, tmp_path: Path) -> None:
    tracking_uri = _tracking_uri(tmp_path)
    params = tiny_params(tracking_uri, log_step=2, num_iters=12, checkpoint_step=4)
    process = _capture(tmp_path, data, params, EMOGAN_TEST_NAN_RANK="1")
    stderr = _finish(process)

    assert process.returncode != 0
    [kept] = _checkpoints(tmp_path)
    # Rank 0's own batches stay finite: it stops because the averaged losses are NaN.
    message = (
        "emogan: error: train: D/loss_real is NaN or infinite in iterations 5-6; the last good "
        f"checkpoint (iteration 4) is kept at {kept}"
    )
    assert stderr.count(message) == 2, stderr
    state = torch.load(kept, weights_only=True)
    assert state["progress"]["iteration"] == 4
    assert all(value.isfinite().all() for value in state["state_dicts"]["D"].values())
    assert _only_run(tracking_uri)[1].info.status == "FAILED"


class Critic(torch.nn.Module):
    """A small D: a conv and a linear head, enough for a gradient penalty through both."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.head = torch.nn.Linear(3 * 6 * 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.leaky_relu(self.conv(x), 0.01).flatten(1))


def _critic_loss(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP's D loss: a double backward, as in the D step."""
    x_hat = (0.3 * real + 0.7 * fake).requires_grad_(True)
    penalty = gradient_penalty(critic(x_hat), x_hat)
    return critic(fake).mean() - critic(real).mean() + 10 * penalty


def _shards() -> torch.Tensor:
    """rank, real or fake, batch of 4, 1 x 8 x 8."""
    return torch.randn(2, 2, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _step_on(rank: int, world_size: int, init_file: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(0)
        critic = Critic()
        optimizer = torch.optim.SGD(critic.parameters(), lr=1.0)
        average_on_step(optimizer, world_size)
        real, fake = _shards()[rank]
        _critic_loss(critic, real, fake).backward()
        optimizer.step()
        world = World(torch.device("cpu"), rank, world_size)
        result = {
            "weights": critic.state_dict(),
            "any": world.any(rank == 1),
            "mean": world.mean(torch.tensor([float(rank)])),
        }
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_averaged_gradients_equal_the_gradient_of_the_averaged_loss(tmp_path: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_step_on, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    torch.manual_seed(0)
    reference = Critic()
    shards = _shards()
    loss = (_critic_loss(reference, *shards[0]) + _critic_loss(reference, *shards[1])) / 2
    torch.optim.SGD(reference.parameters(), lr=1.0).zero_grad()
    loss.backward()
    torch.manual_seed(0)
    alone = Critic()  # rank 0's step without averaging, which the reference must not match
    _critic_loss(alone, *shards[0]).backward()
    unaveraged = dict(alone.named_parameters())
    differs = []
    for name, parameter in reference.named_parameters():
        expected = parameter.detach() - parameter.grad
        for rank in ranks:
            torch.testing.assert_close(rank["weights"][name], expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])
        own = unaveraged[name].detach() - unaveraged[name].grad
        differs.append(not torch.allclose(own, expected, atol=1e-4))
    assert differs == [True, True, True, False]  # the head's bias: no gradient depends on data
    assert [rank["any"] for rank in ranks] == [True, True]
    assert [rank["mean"].item() for rank in ranks] == [0.5, 0.5]
