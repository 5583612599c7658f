"""Turn a `device` param (auto, cpu, cuda, cuda:1, mps) into a torch.device, or say why not."""

import torch

from emogan.errors import EmoganError


def resolve_device(name: str, key: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an unavailable device names `key`."""
    if name == "auto":
        if torch.cuda.is_available():
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
