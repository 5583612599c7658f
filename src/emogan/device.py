"""Turn a `device` param (auto, cpu, cuda, cuda:1, mps) into a torch.device, or say why not.

On a machine with several GPUs, `auto` gives each process its own: parallel `dvc queue`
workers would otherwise all train on cuda:0 while the other GPUs sit idle.
"""

import fcntl
import os
import sys
import tempfile
from pathlib import Path

import torch

from emogan.errors import EmoganError

LOCK_PREFIX = "emogan-gpu"
# Lock files of this process's claims, per lock folder: kept open (and so locked) until the
# process exits, when the kernel releases them, however it exits.
_claimed: dict[Path, tuple[int, int]] = {}


def resolve_device(name: str, key: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an unavailable device names `key`.

    With more than one CUDA device visible and CUDA_VISIBLE_DEVICES not set by the user, `auto`
    claims the first GPU no other process has claimed (see claim_gpu) and returns cuda:<index>.
    """
    if name == "auto":
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            if count > 1 and not _user_chose_gpus():
                index = claim_gpu(count)
                if index is not None:
                    return torch.device("cuda", index)
                print(
                    f"emogan: all {count} GPUs are claimed by other emogan processes; "
                    "sharing cuda:0",
                    file=sys.stderr,
                )
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EmoganError(
            f"{key}: unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available()
        and (device.index is None or device.index < torch.cuda.device_count()),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not available:
        raise EmoganError(f"{key}: device {name!r} is not available on this machine (try auto)")
    return device


def claim_gpu(count: int, lock_dir: Path | None = None) -> int | None:
    """The first index in range(count) that no other process holds, claimed with a
    non-blocking exclusive flock on `<lock_dir>/emogan-gpu[-slurm<job>]-<index>.lock` that this
    process holds until it exits; None when all are held. Calling it again in the same process
    returns the same index. lock_dir defaults to the system's temp folder."""
    lock_dir = Path(lock_dir or tempfile.gettempdir())
    if lock_dir in _claimed:
        return _claimed[lock_dir][0]
    # SLURM numbers a job's GPUs from 0 whichever physical ones it got, so two jobs on one node
    # both see a "GPU 0": each job claims among its own.
    job = os.environ.get("SLURM_JOB_ID")
    prefix = f"{LOCK_PREFIX}-slurm{job}" if job else LOCK_PREFIX
    for index in range(count):
        handle = _open_lock(lock_dir / f"{prefix}-{index}.lock")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            continue
        _claimed[lock_dir] = (index, handle)
        return index
    return None


def _user_chose_gpus() -> bool:
    """Whether CUDA_VISIBLE_DEVICES is the user's choice. Inside a SLURM job it is SLURM's
    allocation, which the job's processes still share out among themselves."""
    return "CUDA_VISIBLE_DEVICES" in os.environ and "SLURM_JOB_ID" not in os.environ


def _open_lock(path: Path) -> int:
    """A read-only descriptor of path, created if missing. flock needs no write access, so one
    user's lock file serves every user; and opening it without O_CREAT first keeps
    fs.protected_regular from refusing another user's file in a sticky /tmp."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:  # another process created it between the two calls
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def emulates_bf16(device: torch.device) -> bool:
    """Whether device lacks bf16 arithmetic: a CPU without AVX512-BF16 or AMX converts to float32
    and back around every operation, which measured 11x slower than float32 (BENCHMARKS.md)."""
    if device.type == "cpu":
        return not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if device.type == "cuda":
        return not torch.cuda.is_bf16_supported(including_emulation=False)
    return False
