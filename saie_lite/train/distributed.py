"""Data-parallel training under ``accelerate launch`` or ``torchrun``.

Every process runs the same loop over the same batches. Each one generates and trains on
its own contiguous shard of every batch: answers are gathered so all processes hold the
whole batch, and gradients are summed across processes before the optimizer step, scaled
by the batch's total target-token count, so every process takes the step a single
process would take on the whole batch. Only the main process (rank 0) talks to the
partner and its remark cache (the others receive its remarks), writes SQLite rows and
checkpoints, and draws the live view. A run started on N processes resumes on N.

The launcher sets ``RANK`` and ``WORLD_SIZE`` (and the rendezvous address); this module
only joins the group: gloo on CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from saie_lite.protocols import SyncsGradients, supports


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def shard(n: int, r: int, size: int) -> tuple[int, int]:
    """Contiguous, near-equal [start, end) of ``n`` items for rank ``r``."""
    base, extra = divmod(n, size)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


class Group:
    """The process group, and the few collectives the loop needs."""

    def __init__(self, device: str = "cpu"):
        import torch.distributed as dist

        self.dist = dist
        if device == "cuda":
            import torch

            # One GPU per process: "cuda" below means this process's own device.
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def gather(self, local: list) -> list:
        """Every rank's list, concatenated in rank order, on every rank."""
        parts: list = [None] * self.size
        self.dist.all_gather_object(parts, local)
        return [x for part in parts for x in part]

    def from_main(self, value):
        """Rank 0's value on every rank."""
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_number(self, x: float) -> float:
        import torch

        t = torch.tensor([float(x)], dtype=torch.float64)
        self.dist.all_reduce(t)
        return float(t.item())

    def sum_grads(self, params) -> None:
        """Sum each parameter's gradient over ranks (a rank with no sequences adds 0)."""
        import torch

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.dist.all_reduce(p.grad)


class DataParallelLearner:
    """Wraps a torch learner: generation and updates on this rank's shard of the batch."""

    def __init__(self, learner, group: Group):
        if not supports(learner, SyncsGradients):
            raise _unsupported(learner)
        self.inner, self.group = learner, group
        learner.grad_sync = group

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _mine(self, items: list) -> list:
        start, end = shard(len(items), self.group.rank, self.group.size)
        return items[start:end]

    def generate(self, chats, max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        mine = self._mine(chats)
        local = self.inner.generate(mine, max_new_tokens, temperature) if mine else []
        return self.group.gather(local)

    def train_step(self, sequences):
        # The learner scales by the global target count and sums gradients (grad_sync).
        return self.inner.train_step(self._mine(sequences))

    def save(self, directory) -> None:
        if self.group.is_main:
            self.inner.save(directory)


def remarks_from_main(group: Group, get_remarks: Callable) -> Callable:
    """``get_remarks`` run on rank 0 only (the partner and its cache live there); every
    rank receives the same remarks, so all build the same training sequences."""

    def remarks(partner, store, chats, max_tokens):
        return group.from_main(
            get_remarks(partner, store, chats, max_tokens) if group.is_main else None
        )

    return remarks


def _unsupported(learner):
    from saie_lite.errors import UserError

    return UserError(
        f"data-parallel training (WORLD_SIZE={world_size()}) needs the torch learner; "
        f"this run's learner is {learner.name}"
    )
