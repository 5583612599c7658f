"""Remote training: the GPU workflow and the SLURM script, DVC's S3 remote (a real S3 API from
moto on 127.0.0.1), parallel sweeps through `dvc queue`, and preemption: SIGTERM, checkpoint,
requeue, resume. Everything runs on the CPU in a tiny copy of this project whose pipeline is a
copy stage and the real train stage, so a training takes seconds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from mlflow import MlflowClient
from moto.server import ThreadedMotoServer
from stargan_helpers import write_dataset

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/train.yml"
ACTIONLINT_CONFIG = ROOT / ".github/actionlint.yaml"
SBATCH = ROOT / "scripts/slurm/train.sbatch"
VENV_BIN = Path(sys.executable).parent
SEARCH_PATH = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "emogan tests",
    "GIT_AUTHOR_EMAIL": "tests@emogan.invalid",
    "GIT_COMMITTER_NAME": "emogan tests",
    "GIT_COMMITTER_EMAIL": "tests@emogan.invalid",
}
TINY_TRAIN = {"num_iters": 4, "num_iters_decay": 2, "batch_size": 4, "log_step": 2,
              "sample_step": 2, "checkpoint_step": 2, "device": "cpu"}  # fmt: skip
BASELINE_LAYERS = 3  # the sweeps below train layers 1 and 2, so neither is the baseline's
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def tool(name: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def environment(**extra: str) -> dict[str, str]:
    """This machine's environment without its AWS and MLflow settings, plus extra."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "MLFLOW_", "DVC_", "EMOGAN_", "SLURM_"))
    }
    # The stages call `emogan`, and the scripts call `dvc`, which live beside this interpreter.
    env["PATH"] = SEARCH_PATH
    return {**env, **GIT_IDENTITY, **extra}


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env or environment(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def files_under(root: Path, *folders: str) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


# The workflow ----------------------------------------------------------------------------------


def actionlint(workflow: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("actionlint"), "-config-file", str(ACTIONLINT_CONFIG),
         "-shellcheck", tool("shellcheck"), "-no-color", str(workflow)],
        capture_output=True, text=True,
    )  # fmt: skip


def step(name: str) -> dict:
    """The workflow's step with this id."""
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["train"]["steps"]
    return next(s for s in steps if s.get("id") == name)


def run_step(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a step's script as the runner does (bash -eo pipefail), in tmp_path."""
    script = tmp_path / f"{name}.sh"
    script.write_text(step(name)["run"])
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=tmp_path,
        env=environment(**env),
        capture_output=True,
        text=True,
    )


def test_actionlint_finds_nothing_to_fix_in_the_workflow() -> None:
    result = actionlint(WORKFLOW)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_actionlint_reports_mistakes_in_a_broken_copy(tmp_path: Path) -> None:
    broken = tmp_path / "train.yml"
    text = WORKFLOW.read_text()
    plants = {
        "${{ inputs.jobs }}": "${{ inputs.workers }}",  # no such input
        'dvc queue start -j "$JOBS"': "dvc queue start -j $JOBS",  # unquoted
    }
    for right, wrong in plants.items():
        assert right in text
        text = text.replace(right, wrong)
    broken.write_text(text)
    result = actionlint(broken)
    assert result.returncode == 1
    assert 'property "workers" is not defined' in result.stdout
    assert "SC2086" in result.stdout  # shellcheck's "double quote to prevent globbing"


@pytest.mark.parametrize(
    ("sweep", "overrides", "expected", "queue"),
    [
        ("layers=3,4,5", "", "layers=3,4,5", "true"),
        ("", "layers=4 train.num_iters=200000", "layers=4 train.num_iters=200000", "false"),
        # `+` adds a key that params.yaml leaves at its default
        ("", "+train.n_critic=5 params.yaml:+demo.seed=1",
         "+train.n_critic=5 params.yaml:+demo.seed=1", "false"),
        ("train.g_lr=range(1,3)", "params.yaml:seed=1", "train.g_lr=range(1,3) params.yaml:seed=1",
         "true"),
        ("", "", "", "false"),
    ],
)  # fmt: skip
def test_the_plan_step_turns_the_inputs_into_overrides(
    tmp_path: Path, sweep: str, overrides: str, expected: str, queue: str
) -> None:
    outputs = tmp_path / "outputs"
    result = run_step(
        "plan", tmp_path, SWEEP=sweep, OVERRIDES=overrides, JOBS="2", GITHUB_OUTPUT=str(outputs)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert outputs.read_text().splitlines() == [f"overrides={expected}", f"queue={queue}"]


@pytest.mark.parametrize(
    ("sweep", "jobs", "error"),
    [
        ("layers", "1", "::error::not a KEY=VALUE param override: 'layers'"),
        ("layers=3 =4", "1", "::error::not a KEY=VALUE param override: '=4'"),
        ("layers=3,4", "0", "::error::jobs must be a positive whole number, got '0'"),
    ],
)
def test_the_plan_step_refuses_bad_inputs_with_one_line(
    tmp_path: Path, sweep: str, jobs: str, error: str
) -> None:
    outputs = tmp_path / "outputs"
    result = run_step(
        "plan", tmp_path, SWEEP=sweep, OVERRIDES="", JOBS=jobs, GITHUB_OUTPUT=str(outputs)
    )
    assert result.returncode == 1
    assert result.stdout.strip() == error
    assert not outputs.exists()


# Stands in for dvc where only the order of the calls is under test: records every call, and
# `dvc queue status` prints DVC's table with the first task running for two polls, then ending
# as $FINAL_STATE.
FAKE_DVC = """#!/usr/bin/env bash
echo "$*" >> calls
if [ "$1 $2" = "queue status" ]; then
  polls=$(cat polls 2>/dev/null || echo 0)
  echo $((polls + 1)) > polls
  state=Running
  [ "$polls" -lt 2 ] || state=$FINAL_STATE
  printf 'Task     Name        Created    Status\\n'
  printf '1408ebb  mesic-aces  03:35 AM   %s\\n' "$state"
  printf 'a6d28f1  gruff-wage  03:35 AM   Success\\n\\nWorker status: 1 active, 0 idle\\n'
elif [ "$1 $2" = "queue logs" ]; then
  echo "the log of $3"
fi
"""


@pytest.fixture
def fake_dvc(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(FAKE_DVC)
    (bin_dir / "dvc").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{SEARCH_PATH}"


def test_the_run_step_queues_a_sweep_starts_workers_and_waits_for_them(
    tmp_path: Path, fake_dvc: str
) -> None:
    result = run_step(
        "run", tmp_path, PATH=fake_dvc, FINAL_STATE="Success", POLL_SECONDS="0",
        OVERRIDES="layers=3,4 train.num_iters=10", QUEUE="true", JOBS="2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[:2] == ["exp run --queue -S layers=3,4 -S train.num_iters=10", "queue start -j 2"]
    # Polled until nothing is queued or running, then the final table and the failures.
    assert calls[2:] == ["queue status"] * (len(calls) - 2)
    assert int((tmp_path / "polls").read_text()) >= 3


def test_the_run_step_fails_naming_a_failed_experiment_after_showing_its_log(
    tmp_path: Path, fake_dvc: str
) -> None:
    result = run_step(
        "run", tmp_path, PATH=fake_dvc, FINAL_STATE="Failed", POLL_SECONDS="0",
        OVERRIDES="layers=3,4", QUEUE="true", JOBS="1",
    )  # fmt: skip
    assert result.returncode == 1
    assert "the log of mesic-aces" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "::error::failed experiments: mesic-aces"
    assert (tmp_path / "calls").read_text().splitlines()[-1] == "queue logs mesic-aces"


def test_the_run_step_runs_one_configuration_in_the_workspace(
    tmp_path: Path, fake_dvc: str
) -> None:
    result = run_step("run", tmp_path, PATH=fake_dvc, OVERRIDES="layers=4", QUEUE="false", JOBS="3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "calls").read_text().splitlines() == ["exp run -S layers=4"]


def test_the_slurm_script_is_valid_bash_and_shellcheck_clean() -> None:
    assert run(["bash", "-n", str(SBATCH)], ROOT).returncode == 0
    checked = run([tool("shellcheck"), str(SBATCH)], ROOT, check=False)
    assert (checked.returncode, checked.stdout) == (0, "")
    directives = [line for line in SBATCH.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"#SBATCH --requeue", "#SBATCH --signal=B:TERM@120"} <= set(directives)


# A tiny copy of the project ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree (tracked and untracked, not ignored files) whose pipeline is `merge`, a
    copy of a dvc-added folder of faces, and the real `train` with tiny params; built once."""
    dest = tmp_path_factory.mktemp("tiny") / "project"
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)
    # Outside data/: DVC does not look for .dvc files under a folder that /data/* ignores.
    write_dataset(dest / "faces")
    pipeline = yaml.safe_load((dest / "dvc.yaml").read_text())
    pipeline["stages"] = {
        "merge": {"cmd": "cp -r faces data/processed", "deps": ["faces"],
                  "outs": ["data/processed"]},
        "train": pipeline["stages"]["train"],
    }  # fmt: skip
    (dest / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params.update(layers=BASELINE_LAYERS, image_size=16)
    params["model"].update(g_conv_dim=4, d_conv_dim=4)
    params["train"].update(TINY_TRAIN)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = environment(MLFLOW_TRACKING_URI=f"sqlite:///{dest.parent / 'baseline.db'}")
    run(["git", "init", "-q"], dest)
    run(["dvc", "add", "-q", "faces"], dest)
    run(["dvc", "repro", "-q"], dest, env)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "tiny project"], dest)
    return dest


def copy_of(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 API server on 127.0.0.1."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_dvc_push_and_pull_through_s3_bring_back_every_file_byte_for_byte(
    tiny_project: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    project = copy_of(tiny_project, tmp_path / "project")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
    s3.create_bucket(Bucket="emogan-dvc")
    env = environment(**S3_CREDENTIALS)
    run(["dvc", "remote", "add", "-d", "storage", "s3://emogan-dvc/store"], project, env)
    run(["dvc", "remote", "modify", "storage", "endpointurl", s3_endpoint], project, env)
    tracked = ("faces", "data/processed", "models/stargan")
    before = files_under(project, *tracked)
    assert "models/stargan/generator.pt" in before and "data/processed/index.csv" in before

    run(["dvc", "push", "--run-cache"], project, env)  # as the workflow pushes
    listed = s3.list_objects_v2(Bucket="emogan-dvc", Prefix="store/files/md5/")["Contents"]
    pushed = {item["Key"].removeprefix("store/files/md5/").replace("/", "") for item in listed}
    needed = {hashlib.md5(data).hexdigest() for data in before.values()} | _folder_hashes(project)
    assert needed <= pushed
    assert "in sync" in run(["dvc", "status", "--cloud"], project, env).stdout

    shutil.rmtree(project / ".dvc/cache")
    for folder in tracked:
        shutil.rmtree(project / folder)
    run(["dvc", "pull", "--run-cache"], project, env)

    assert files_under(project, *tracked) == before
    assert "up to date" in run(["dvc", "status"], project, env).stdout


def _folder_hashes(project: Path) -> set[str]:
    """The md5 of every tracked folder's listing (an object of its own), from the .dvc file
    and dvc.lock."""
    entries = yaml.safe_load((project / "faces.dvc").read_text())["outs"]
    for stage in yaml.safe_load((project / "dvc.lock").read_text())["stages"].values():
        entries += stage["outs"]
    return {entry["md5"] for entry in entries if entry["md5"].endswith(".dir")}


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


# The SLURM script, for real: only scontrol is SLURM's ---------------------------------------------


def slurm_project(tiny_project: Path, tmp_path: Path) -> Path:
    """A copy with the team's set-up: a DVC remote and a Git origin, committed, and the venv
    where `make install` puts it."""
    project = copy_of(tiny_project, tmp_path / "project")
    (project / ".venv").symlink_to(VENV_BIN.parent)
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-store")], project)
    run(["git", "commit", "-qam", "the team's DVC remote"], project)
    run(["git", "init", "-q", "--bare", str(tmp_path / "origin.git")], tmp_path)
    run(["git", "remote", "add", "origin", str(tmp_path / "origin.git")], project)
    run(["git", "push", "-q", "origin", "HEAD"], project)
    return project


@pytest.fixture
def scontrol(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose `scontrol` records its arguments in the returned file."""
    bin_dir, calls = tmp_path / "slurm-bin", tmp_path / "scontrol-calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{SEARCH_PATH}", calls


def sbatch_env(project: Path, tmp_path: Path, path: str, **extra: str) -> dict[str, str]:
    return environment(
        PATH=path,
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(project),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'team.db'}",
        EMOGAN_CHECKPOINTS=str(tmp_path / "checkpoints"),
        EMOGAN_POLL_SECONDS="2",
        **extra,
    )


def experiments(project: Path) -> dict[str, dict]:
    """Each experiment of `dvc exp show --json` -> its params, and its metrics/train.json as
    its commit holds it (an out in git, not one of `dvc exp show`'s metrics)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            revision = experiment["revs"][0]
            trained = run(["git", "show", f"{revision['rev']}:metrics/train.json"], project)
            found[experiment["name"]] = {
                "params": revision["data"]["params"]["params.yaml"]["data"],
                "metrics": json.loads(trained.stdout),
            }
    return found


@pytest.mark.slow
def test_a_sweep_runs_in_parallel_queue_workers_and_is_pushed(
    tiny_project: Path, tmp_path: Path, scontrol: tuple[str, Path]
) -> None:
    project = slurm_project(tiny_project, tmp_path)
    path, _ = scontrol
    env = sbatch_env(project, tmp_path, path, EMOGAN_JOBS="2")
    # The team's store exists before a sweep: two trainers creating a sqlite store's tables at
    # once race (a server creates them once, at its start).
    MlflowClient(env["MLFLOW_TRACKING_URI"]).search_experiments()

    result = run(["bash", str(SBATCH), "layers=1,2"], project, env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    found = experiments(project)
    assert sorted(exp["params"]["layers"] for exp in found.values()) == [1, 2]
    for exp in found.values():
        assert exp["metrics"]["iterations"] == TINY_TRAIN["num_iters"]
        assert exp["metrics"]["G/loss_rec"] > 0
    # The workers ran at the same time: each one's training overlaps the other's.
    spans = sorted(_training_spans(tmp_path / "team.db").values())
    assert len(spans) == 2 and spans[0][1] > spans[1][0], spans
    # Both were tracked in the team's store, named by their experiment.
    runs = _stargan_runs(tmp_path / "team.db")
    assert {run.data.tags["dvc_exp_name"]: run.data.params["layers"] for run in runs} == {
        name: str(exp["params"]["layers"]) for name, exp in found.items()
    }
    # Git has the experiments, the DVC remote their models.
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], tmp_path / "origin.git")
    pushed = refs.stdout.split()
    assert sorted(ref.rsplit("/", 1)[1] for ref in pushed) == sorted(found)
    for ref in pushed:
        lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], project).stdout)
        [model] = [
            out for out in lock["stages"]["train"]["outs"] if out["path"] == "models/stargan"
        ]
        md5 = model["md5"]
        assert (tmp_path / "dvc-store/files/md5" / md5[:2] / md5[2:]).is_file()


def _stargan_runs(database: Path) -> list:
    client = MlflowClient(f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("emogan")
    runs = client.search_runs([experiment.experiment_id])
    return [run for run in runs if run.info.run_name.startswith("stargan")]


def _training_spans(database: Path) -> dict[str, tuple[int, int]]:
    return {run.info.run_id: (run.info.start_time, run.info.end_time)
            for run in _stargan_runs(database)}  # fmt: skip


@pytest.mark.slow
def test_sigterm_before_the_time_limit_checkpoints_requeues_and_the_requeued_job_resumes(
    tiny_project: Path, tmp_path: Path, scontrol: tuple[str, Path]
) -> None:
    project = slurm_project(tiny_project, tmp_path)
    path, scontrol_calls = scontrol
    long_run = ["train.num_iters=100000", "train.checkpoint_step=3", "train.log_step=3",
                "train.sample_step=100000"]  # fmt: skip
    checkpoints = tmp_path / "checkpoints"

    first = _start_sbatch(project, long_run, sbatch_env(project, tmp_path, path), tmp_path / "1")
    try:
        _wait_for(lambda: list(checkpoints.glob("*/checkpoint.pt")), first, "a checkpoint")
        first.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends: the script only
        assert first.wait(timeout=150) == 143
    finally:
        _stop(first, project)
    log = (tmp_path / "1").read_text()
    stopped = re.search(r"stopped by SIGTERM at iteration (\d+); checkpoint written to (\S+);", log)
    assert stopped, log
    assert Path(stopped[2]).is_relative_to(checkpoints) and Path(stopped[2]).is_file()
    assert scontrol_calls.read_text().splitlines() == ["requeue 4242"]
    assert _trainers(project) == []

    env = sbatch_env(project, tmp_path, path, SLURM_RESTART_COUNT="1")
    second = _start_sbatch(project, long_run, env, tmp_path / "2")
    try:
        _wait_for(lambda: "resuming from" in (tmp_path / "2").read_text(), second, "a resume")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=150) == 143
    finally:
        _stop(second, project)
    resumed = re.search(r"resuming from iteration (\d+)", (tmp_path / "2").read_text())
    assert resumed and int(resumed[1]) == int(stopped[1])
    assert scontrol_calls.read_text().splitlines() == ["requeue 4242"] * 2
    # The resumed training goes on in the same MLflow run.
    [tracked] = _stargan_runs(tmp_path / "team.db")
    assert tracked.info.status == "KILLED"


def _start_sbatch(
    project: Path, overrides: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            ["bash", str(SBATCH), *overrides],
            cwd=project,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _wait_for(ready, process: subprocess.Popen[bytes], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the job ended (exit {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.5)


def _trainers(project: Path) -> list[int]:
    """The `emogan train` processes working in project, as the script finds them."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cwd = Path(os.readlink(proc / "cwd"))
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cwd.is_relative_to(project.resolve()) and any(
            arg.endswith(b"/emogan") and following == b"train"
            for arg, following in zip(argv, argv[1:], strict=False)
        ):
            found.append(int(proc.name))
    return found


def _stop(process: subprocess.Popen[bytes], project: Path) -> None:
    """After a failed assertion: end the job and any trainer it left."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for pid in _trainers(project):
        os.kill(pid, signal.SIGKILL)
