"""What a stage shows on stderr: its header, a tqdm bar on a terminal, a few lines in a log."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from stargan_helpers import tiny_params, write_dataset
from tqdm import tqdm

from emogan import progress
from emogan.progress import (
    LOG_LINES,
    STAGE_TIMING,
    LogProgress,
    format_duration,
    machine_identity,
    progress_bar,
    stage_header,
    stage_timing,
)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _log_lines(text: str, desc: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{desc}: ")]


def test_on_a_terminal_the_bar_is_tqdms() -> None:
    terminal = FakeTerminal()
    with progress_bar(50, "train", "it", stream=terminal) as bar:
        assert isinstance(bar, tqdm)
        for _ in range(50):
            bar.update()
    drawn = terminal.getvalue()
    assert drawn.startswith("\rtrain:   0%|") and drawn.count("\r") >= 2  # redrawn in place
    assert "50/50" in drawn


def test_in_a_log_a_bar_writes_a_line_per_tenth_and_no_carriage_return() -> None:
    log = io.StringIO()
    with progress_bar(1000, "train", "it", stream=log) as bar:
        assert isinstance(bar, LogProgress)
        for done in range(1, 1001):
            bar.set_postfix({"loss": done}, refresh=False)
            bar.update()
    text = log.getvalue()
    lines = _log_lines(text, "train")
    assert "\r" not in text and len(lines) == LOG_LINES == len(text.splitlines())
    assert lines[0].startswith("train: 10% 100/1000 it, ") and "elapsed, about " in lines[0]
    assert lines[0].endswith("; loss=100")
    assert lines[-1].startswith("train: 100% 1000/1000 it in ") and lines[-1].endswith("loss=1000")


def test_a_resumed_bar_counts_from_where_it_resumed_and_says_where_it_stopped() -> None:
    log = io.StringIO()
    with progress_bar(100, "train", "it", initial=45, stream=log) as bar:
        for _ in range(30):
            bar.update()
    lines = _log_lines(log.getvalue(), "train")
    # 50, 60 and 70 reached; the stop at 75 is the last line.
    assert [line.split()[2] for line in lines] == ["50/100", "60/100", "70/100", "75/100"]
    assert "left" in lines[-1]


def test_a_hidden_bar_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar(10, "train", "it", show=False) as bar:
        bar.update(10)
    assert capsys.readouterr() == ("", "")


def test_durations_read_as_a_person_says_them() -> None:
    assert [format_duration(s) for s in (4.24, 38.4, 59.6, 125, 3599.6, 3780)] == [
        "4.2s",
        "38s",
        "1m 00s",
        "2m 05s",
        "1h 00m",
        "1h 03m",
    ]


def test_the_header_quotes_only_a_duration_timed_on_this_machine(tmp_path: Path) -> None:
    metrics = tmp_path / "train.json"
    assert stage_header("train", metrics) == "emogan train: no previous run on this machine"
    metrics.write_text("{not json")
    assert stage_header("train", metrics) == "emogan train: no previous run on this machine"
    metrics.write_text(json.dumps({"wall_s": 782.8}))  # a run from before stage_timing
    assert stage_header("train", metrics) == "emogan train: no previous run on this machine"

    here = {"wall_s": 782.8, "machine": machine_identity()}
    metrics.write_text(json.dumps({"iterations": 6000, STAGE_TIMING: here}))
    assert stage_header("train", metrics) == (
        "emogan train: expect about 13m 03s (the last run on this machine)"
    )
    elsewhere = {"wall_s": 95.0, "machine": "Intel Xeon Platinum 8480+, 16 cores; NVIDIA H200"}
    metrics.write_text(json.dumps({STAGE_TIMING: elsewhere}))
    assert stage_header("train", metrics) == (
        f"emogan train: no previous run on this machine ({metrics} was timed on Intel Xeon "
        "Platinum 8480+, 16 cores; NVIDIA H200)"
    )


def test_the_header_reads_the_committed_metrics_when_dvc_has_removed_them(tmp_path: Path) -> None:
    # `dvc repro` deletes a stage's outs, its metrics file included, before running it.
    metrics = tmp_path / "metrics" / "train.json"
    metrics.parent.mkdir()
    here = {"wall_s": 782.8, "machine": machine_identity()}
    metrics.write_text(json.dumps({STAGE_TIMING: here}))
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    for command in (["init", "-q"], ["add", "metrics"], ["commit", "-qm", "a run"]):
        subprocess.run([*git, *command], check=True)
    metrics.unlink()
    assert stage_header("train", metrics) == (
        "emogan train: expect about 13m 03s (the last run on this machine)"
    )


def test_the_timing_names_this_machines_cpu_and_cores() -> None:
    timing = stage_timing(0.0)[STAGE_TIMING]
    assert set(timing) == {"wall_s", "machine"} and timing["wall_s"] > 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert timing["machine"].startswith(f"{progress._cpu_model()}, {cores} cores")


def test_emogan_classifier_in_a_log_has_a_header_a_few_lines_and_then_its_last_duration(
    tmp_path: Path,
) -> None:
    data = write_dataset(tmp_path / "data", train_per_emotion=8, test_per_emotion=2)
    params = tiny_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # More epochs than a log gets lines, so that the lines are seen to be bounded.
    classifier = {"epochs": 3 * LOG_LINES, "batch_size": 16, "val_fraction": 0.25, "device": "cpu"}
    params = params.model_copy(
        update={"classifier": params.classifier.model_copy(update=classifier)}
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    metrics = Path("metrics") / "classifier.json"
    command = [
        Path(sys.executable).with_name("emogan"), "classifier", "--data", data,
        "--out", "model", "--metrics", metrics, "--confusion", "confusion.csv",
    ]  # fmt: skip
    env = {name: value for name, value in os.environ.items() if name != "RANK"}
    # One thread: the tiny network gains nothing from more, and on a busy 2-core machine
    # threads waiting for each other made a 5 s run take a minute and a half.
    env["OMP_NUM_THREADS"] = "1"

    def run() -> str:
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env=env | {"DVC_ROOT": str(tmp_path)},
            capture_output=True,  # stderr a pipe, as in CI or DVC's queue logs
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["epochs"] == 3 * LOG_LINES  # stdout is the report alone
        return done.stderr

    first = run()
    assert first.splitlines()[0] == "emogan classifier: no previous run on this machine"
    assert "\r" not in first
    lines = _log_lines(first, "classifier")
    assert 1 <= len(lines) <= LOG_LINES, first
    assert lines[-1].startswith(f"classifier: 100% {3 * LOG_LINES}/{3 * LOG_LINES} epoch in ")
    timing = json.loads((tmp_path / metrics).read_text())[STAGE_TIMING]
    assert timing["machine"] == machine_identity()

    second = run()
    assert second.splitlines()[0] == (
        f"emogan classifier: expect about {format_duration(timing['wall_s'])} "
        "(the last run on this machine)"
    )
