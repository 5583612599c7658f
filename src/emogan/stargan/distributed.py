"""Data-parallel training over the processes `torchrun --nproc_per_node=N` starts.

Every rank holds the whole of G and D, samples its own batches and averages its gradients with
the other ranks' before each optimizer step, so all ranks keep identical weights and one
iteration trains on N batches. Rank 0 alone writes and logs; the train loop asks `World` which
rank it is and makes its stop decisions together with the others.

Why explicit averaging and not torch's DistributedDataParallel wrapper:
- WGAN-GP differentiates D's output with `torch.autograd.grad(..., create_graph=True)` and then
  backpropagates through that gradient. DDP's documentation says it does not support
  `autograd.grad`, and its reducer hooks on higher-order gradients have given wrong gradients
  (pytorch/pytorch#47562, #63812, #63929). Measured with torch 2.14 on gloo, it happens to give
  the right D gradients for this penalty (taken with respect to the input only), but that is the
  unsupported side of its contract.
- g_loss.backward() also fills D's gradients, which the G step never uses: DDP would all-reduce
  all of D on every G step as well.
- The wrapper renames every state_dict key ("module."), which the checkpoints, the sample grids
  and the logged MLflow model would all have to undo.
Averaging in an optimizer step pre-hook reduces exactly what each optimizer is about to use,
once, after the whole double backward; the train step needs no change. What is lost is DDP's
overlap of communication with the backward pass, small next to these networks' compute.
"""

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.hooks import RemovableHandle

from emogan.device import resolve_device
from emogan.errors import EmoganError

BUCKET_BYTES = 32 * 2**20  # gradients are flattened into buffers of at most this size


@dataclass(frozen=True)
class World:
    """This process's place among the training's ranks; one rank of one when not under torchrun,
    where every method is a no-op."""

    device: torch.device
    rank: int = 0
    size: int = 1
    # Stop flags and barriers go through a CPU (gloo) group: on NCCL they would need a device
    # tensor, and reading it back every iteration would wait for the GPU.
    control: dist.ProcessGroup | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, outputs and the MLflow run."""
        return self.rank == 0

    def tags(self) -> dict[str, str]:
        """MLflow tags of a data-parallel run: its world size multiplies the batch."""
        return {"world_size": str(self.size)} if self.distributed else {}

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The average of tensor over the ranks (a collective: every rank must call it)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.size

    def any(self, flag: bool) -> bool:
        """Whether flag is set on any rank (a collective): every rank gets the same answer, so
        all of them leave the loop at the same iteration and none waits forever in the next
        all_reduce."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)

    def split_stream(self, generator: torch.Generator, seed: int, iteration: int) -> None:
        """Reseed generator, which drives the batches, on ranks other than 0, so that ranks draw
        different batches. Rank 0 keeps its stream (a checkpoint holds rank 0's only)."""
        if self.rank:
            generator.manual_seed(rank_seed(seed, self.rank, iteration))

    def replicate(
        self, modules: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer]
    ) -> None:
        """Start every rank from rank 0's weights and average the gradients of each optimizer's
        parameters over the ranks before each of its steps."""
        if not self.distributed:
            return
        for module in modules:
            if any(True for _ in module.buffers()):
                # Buffers (BatchNorm's running statistics) would drift apart: nothing averages
                # them. The StarGAN networks have none (InstanceNorm without running stats).
                raise ValueError(f"{type(module).__name__} has buffers, which are not kept in sync")
            for parameter in module.parameters():
                dist.broadcast(parameter.data, src=0)
        for optimizer in optimizers:
            average_on_step(optimizer, self.size)


def world_size_from_env() -> int:
    """The number of processes torchrun started; 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def session(device_name: str, key: str) -> Iterator[World]:
    """The World of this process for a training on device_name (the `device` param named key).

    Outside torchrun (WORLD_SIZE unset or 1): the device resolve_device picks, no process group.
    Under torchrun: rank r of LOCAL_RANK l trains on cuda:l with NCCL when CUDA is used, else on
    the CPU with gloo; the process group is joined here and left when the block ends.
    """
    if world_size_from_env() <= 1:
        yield World(resolve_device(device_name, key))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device_name, key, local_rank)
    joined = not dist.is_initialized()
    if joined:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    try:
        control = dist.new_group(backend="gloo") if device.type == "cuda" else None
        yield World(device, dist.get_rank(), dist.get_world_size(), control)
    finally:
        if joined:
            dist.destroy_process_group()


def rank_device(device_name: str, key: str, local_rank: int) -> torch.device:
    """This rank's device under torchrun: cuda:<local_rank> for auto with CUDA and for any cuda
    device (one GPU per process), else the CPU. MPS is refused: gloo cannot reduce its tensors."""
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not cuda:
        device = resolve_device(device_name, key)
        if device.type != "cpu":
            raise EmoganError(
                f"{key}: torchrun trains on CUDA or the CPU, not {device_name!r} (use cpu or auto)"
            )
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise EmoganError(
            f"{key}: torchrun started process {local_rank} on this machine but only {count} "
            "CUDA device(s) are visible; use --nproc_per_node at most that"
        )
    return torch.device("cuda", local_rank)


def rank_seed(seed: int, rank: int, iteration: int) -> int:
    """The seed of rank's batch stream from iteration on: seed + rank from the start. A resumed
    run reseeds the ranks other than 0 from the iteration, as only rank 0's stream is in the
    checkpoint; the resumed run is reproducible, but not equal to one that was never stopped."""
    if iteration == 0:
        return seed + rank
    digest = hashlib.sha256(f"{seed}:{rank}:{iteration}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # manual_seed takes a signed 64-bit value


def average_on_step(optimizer: torch.optim.Optimizer, world_size: int) -> RemovableHandle:
    """Average the gradients of optimizer's parameters over the ranks just before each step.

    A pre-hook rather than a call between backward() and step(): the train step stays as it is,
    and whatever filled the gradients in between (a double backward, several backward calls)
    is all in. Every rank must step the optimizer at the same iterations.
    """

    def hook(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        average_gradients(params, world_size)

    return optimizer.register_step_pre_hook(hook)


def average_gradients(
    params: Iterable[torch.Tensor],
    world_size: int,
    group: dist.ProcessGroup | None = None,
    bucket_bytes: int = BUCKET_BYTES,
) -> None:
    """Replace each parameter's .grad by its average over the ranks of group, in place.

    Parameters without a gradient are skipped; every rank runs the same graph, so they are the
    same on every rank. Gradients are flattened into a few buffers: one all_reduce per buffer
    instead of one per tensor, which is what costs on a network.
    """
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        dist.all_reduce(flat, group=group)
        flat /= world_size
        for grad, averaged in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            grad.copy_(averaged.view_as(grad))


def _buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of tensors of one device and dtype, each under bucket_bytes unless a
    single tensor is larger."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        same_kind = bucket and (tensor.device, tensor.dtype) == (bucket[0].device, bucket[0].dtype)
        if bucket and (not same_kind or size + nbytes > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket
