"""Resumable training state: one checkpoint per configuration, named by its fingerprint.

The fingerprint hashes everything that decides the trained weights, so running the same
configuration again resumes its checkpoint, another configuration starts afresh beside it, and
switching back resumes the first. How a run is watched (log, sample and checkpoint steps) and
where and how fast it runs (device, compile) are left out: changing them must not throw away
hours of training.
"""

import hashlib
import json
import pickle
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emogan import atomic
from emogan.errors import EmoganError

NOT_DECISIVE = ("log_step", "sample_step", "checkpoint_step", "device", "compile")
CHECKPOINT_NAME = "checkpoint.pt"

Stateful = torch.nn.Module | torch.optim.Optimizer


@dataclass
class Progress:
    """Where a training stands, besides its networks and random states."""

    iteration: int = 0  # iterations done
    run_id: str | None = None  # the MLflow run to continue
    loss_rows: list[dict[str, float]] = field(default_factory=list)  # the loss log so far
    window: dict | None = None  # losses summed since the last log step (LossWindow.state)


def config_fingerprint(config: Mapping[str, object], data_hash: str) -> str:
    """sha256 of the resolved training config, less what does not change the weights, and of
    the data."""
    decisive = {key: value for key, value in config.items() if key not in NOT_DECISIVE}
    decisive["data_hash"] = data_hash
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def checkpoint_path(checkpoint_dir: Path, fingerprint: str) -> Path:
    return Path(checkpoint_dir) / fingerprint[:16] / CHECKPOINT_NAME


def save_checkpoint(
    path: Path,
    fingerprint: str,
    parts: Mapping[str, Stateful],
    generator: torch.Generator,
    progress: Progress,
) -> None:
    """Write networks, optimizers, random states and progress in one atomic replace: a kill at
    any moment leaves the previous checkpoint or this one, never a torn file."""
    state = {
        "fingerprint": fingerprint,
        "progress": vars(progress),
        "state_dicts": {name: part.state_dict() for name, part in parts.items()},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if generator.device.type == "cuda" else [],
            "generator": generator.get_state(),
            "generator_device": generator.device.type,
        },
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(
    path: Path, fingerprint: str, parts: Mapping[str, Stateful], generator: torch.Generator
) -> Progress | None:
    """Restore parts and random states from path and return the progress; None when there is
    no checkpoint."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise EmoganError(
            f"{path}: unreadable checkpoint ({' '.join(str(error).split())[:200]}); "
            "delete it to train this configuration from the start"
        ) from None
    if state["fingerprint"] != fingerprint:
        raise EmoganError(
            f"{path}: holds another configuration (fingerprint {state['fingerprint'][:16]}); "
            "delete it to train this configuration from the start"
        )
    for name, part in parts.items():
        part.load_state_dict(state["state_dicts"][name])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["generator_device"] == generator.device.type:
        generator.set_state(rng["generator"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
    else:  # a CUDA random state cannot drive a CPU generator, nor the reverse
        print(
            f"{path}: written on {rng['generator_device']}, resumed on {generator.device.type}: "
            "the batch sampling's random stream starts over",
            file=sys.stderr,
        )
    return Progress(**state["progress"])
