"""The few facts about a ``torchrun`` launch that ``finetune.train`` needs, and the wait at its end.

Why a module of its own: the trainer (HF Trainer under sentence-transformers) does the data-parallel
work itself once ``torchrun`` has set ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; what is ours is
deciding, before the trainer exists, how the patient-aware sampler shards an epoch (it needs the
world size) and which process writes the model (rank 0 only). Reading the launcher's environment
instead of ``torch.distributed`` lets that be decided before any process group is up, and keeps
importing this module free of torch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# How long the other ranks wait for rank 0 to finish after training (interpolation choice on dev and
# guard sets, saving, the model card). Generous on purpose: it is a separate gloo group, so the
# trainer's own collectives keep HF's 30-minute timeout for detecting a hung step.
MAIN_WORK_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a ``torchrun`` launch (1 process, rank 0 without one)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_from_env(environ: dict[str, str] | None = None) -> Launch:
    """The launch that ``torchrun`` (or ``accelerate launch``) described in the environment."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    rank = int(env.get("RANK", "0") or 0)
    local = int(env.get("LOCAL_RANK", str(rank)) or 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent launch: RANK={rank} WORLD_SIZE={world}")
    return Launch(world_size=world, rank=rank, local_rank=local)


def ddp_backend(cuda: bool) -> str:
    """NCCL between GPUs; gloo on CPU (NCCL has no CPU tensors), which is what the CPU test runs."""
    return "nccl" if cuda else "gloo"


def supports_gather(loss_class: type) -> bool:
    """Whether this sentence-transformers' loss can gather in-batch negatives across ranks.

    ``gather_across_devices`` arrived in sentence-transformers 5.x; without it each rank's queries
    see only that rank's documents as negatives (per-rank batch, not the global one).
    """
    import inspect

    return "gather_across_devices" in inspect.signature(loss_class.__init__).parameters


def open_wait_group(launch: Launch, timeout: timedelta = MAIN_WORK_TIMEOUT) -> Any:
    """A gloo group for the wait at the end of training, or None in a single process.

    Opened while every rank is at the same point (creating a group is collective and waits under
    the default group's timeout): later only the broadcast waits, under ``timeout``. Gloo, because
    the wait may outlast the trainer's collective timeout and NCCL would need CUDA tensors for a
    Python object.
    """
    if not launch.distributed:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"launched as rank {launch.rank} of {launch.world_size} but no process group is up")
    return dist.new_group(backend="gloo", timeout=timeout)


def share_from_main(group: Any, value: Any) -> Any:
    """Rank 0's ``value`` on every rank, once rank 0 has it: the barrier after rank 0's writes.

    Every rank of ``group`` (from :func:`open_wait_group`) calls this; with no group (one process)
    it returns ``value``. The group is closed afterwards: it serves one wait.
    """
    if group is None:
        return value
    import torch.distributed as dist

    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    dist.destroy_process_group(group)
    return box[0]


def close_process_group(launch: Launch) -> None:
    """Tear the process group down before the interpreter exits (the CLI owns the process).

    Why: left to interpreter shutdown, a gloo or NCCL group can abort the process after the work
    is done (seen on CPU: "terminate called without an active exception"), which torchrun reports
    as a failed run.
    """
    if not launch.distributed:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
