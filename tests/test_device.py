"""Device choice, and how parallel processes share several GPUs out: no GPU needed, the claims
are real flocks between real processes, only the GPU count is faked."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from emogan import device as device_module
from emogan.device import claim_gpu, resolve_device
from emogan.errors import EmoganError

# Claims a GPU among argv[2] in lock folder argv[1], prints the index, then holds the claim
# until its stdin closes.
CLAIMER = """
import sys
from pathlib import Path
from emogan.device import claim_gpu
print(claim_gpu(int(sys.argv[2]), Path(sys.argv[1])), flush=True)
sys.stdin.read()
"""


@pytest.fixture(autouse=True)
def fresh_claims(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """This process's claims start empty for each test, and are released after it."""
    claims: dict = {}
    monkeypatch.setattr(device_module, "_claimed", claims)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield claims
    for _, handle in claims.values():
        os.close(handle)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Four visible CUDA devices, as torch reports them, and a private temp folder."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _claimer(lock_dir: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLAIMER, str(lock_dir), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _claimed_index(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def _release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def _hold(path: Path) -> int:
    """Claim a lock file the way another process would: its own open file, its own flock."""
    handle = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_processes_started_together_claim_different_gpus_until_they_exit(tmp_path: Path) -> None:
    first, second = _claimer(tmp_path, 2), _claimer(tmp_path, 2)
    held_by_first, held_by_second = _claimed_index(first), _claimed_index(second)
    assert {held_by_first, held_by_second} == {"0", "1"}

    third = _claimer(tmp_path, 2)
    assert _claimed_index(third) == "None"  # both GPUs held
    _release(third)

    _release(first)  # exiting releases the claim: the next process gets that GPU
    fourth = _claimer(tmp_path, 2)
    assert _claimed_index(fourth) == held_by_first
    _release(fourth)
    _release(second)


def test_a_second_claim_in_the_same_process_returns_the_same_gpu(tmp_path: Path) -> None:
    other = _hold(tmp_path / "emogan-gpu-0.lock")
    try:
        assert claim_gpu(3, tmp_path) == 1
        assert claim_gpu(3, tmp_path) == 1
    finally:
        os.close(other)


def test_auto_gives_each_process_its_own_gpu_when_several_are_visible(gpus: Path) -> None:
    other = _hold(gpus / "emogan-gpu-0.lock")
    try:
        assert resolve_device("auto", "train.device") == torch.device("cuda", 1)
    finally:
        os.close(other)
    assert sorted(path.name for path in gpus.iterdir()) == [
        "emogan-gpu-0.lock",
        "emogan-gpu-1.lock",
    ]


def test_auto_shares_the_first_gpu_when_all_are_claimed(
    gpus: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    others = [_hold(gpus / f"emogan-gpu-{index}.lock") for index in range(4)]
    try:
        assert resolve_device("auto", "train.device") == torch.device("cuda")
    finally:
        for handle in others:
            os.close(handle)
    assert "all 4 GPUs are claimed" in capfd.readouterr().err


def test_auto_leaves_the_users_cuda_visible_devices_alone(
    gpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,4,5")
    assert resolve_device("auto", "train.device") == torch.device("cuda")
    assert list(gpus.iterdir()) == []


def test_inside_a_slurm_job_its_gpus_are_shared_out_under_the_jobs_own_locks(
    gpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # SLURM's allocation, not the user's
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    other_job = _hold(gpus / "emogan-gpu-0.lock")  # a process outside this job
    try:
        assert resolve_device("auto", "train.device") == torch.device("cuda", 0)
    finally:
        os.close(other_job)
    assert (gpus / "emogan-gpu-slurm4242-0.lock").is_file()


def test_one_gpu_is_used_without_claiming(gpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", "train.device") == torch.device("cuda")
    assert list(gpus.iterdir()) == []


def test_explicit_devices_are_checked_and_named_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu", "train.device") == torch.device("cpu")
    with pytest.raises(EmoganError, match=r"^train.device: device 'cuda:1' is not available"):
        resolve_device("cuda:1", "train.device")
    with pytest.raises(EmoganError, match=r"^crop.device: unknown device 'gpu'"):
        resolve_device("gpu", "crop.device")
