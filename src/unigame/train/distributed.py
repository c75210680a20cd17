"""The trainer's view of the process group: which shard of the global batch is this process's, and the
few collectives UniGame needs (gradient averaging, candidate gathering, metric means, agreement).

Launched by `accelerate launch` or `torchrun` (WORLD_SIZE > 1), accelerate's `PartialState` creates the
process group (NCCL on GPUs, gloo on CPU) and picks the device; otherwise nothing is initialised and
every method is the identity, so a one-process run executes exactly the code it always did.

Why not `DistributedDataParallel` around the model: the adapter calls submodules of the model
(`language_model`, `vqmodel`, ...) rather than the wrapper's `forward`, and DDP only arms its gradient
hooks inside that `forward`, so it would silently skip the sync. The two players also back-propagate
through one graph with `backward(inputs=...)`, which DDP's reducer does not expect. What DDP computes
for the trainable parameters -- the mean of every rank's gradient, in flat buckets -- is done here
explicitly after each backward; only LoRA and the perturber have gradients, a few MB to tens of MB.

FSDP (`ACCELERATE_USE_FSDP=true`, which `distributed_type: FSDP` in an accelerate config sets): the
language model's decoder layers are sharded with PyTorch FSDP2 (`fully_shard`), whose hooks sit on each
layer's own `forward` and so fire however the adapter reaches them. FSDP then reduce-scatters the
sharded LoRA gradients itself; everything else (perturber, vision, VQ, embeddings) stays replicated.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Distributed", "is_main_process", "is_sharded", "rank_seed", "shard_slice"]


def shard_slice(n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of n items (sizes differ by at most one; rank order = item order).

    Concatenating every rank's shard in rank order gives back the n items, which is what makes a
    multi-process step see the items of the one-process step with the same global batch.
    """
    return slice(rank * n // world_size, (rank + 1) * n // world_size)


def rank_seed(seed: int, rank: int) -> int:
    """A seed for rank > 0's own random streams (dropout masks), derived from (seed, rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def is_sharded(tensor: Tensor) -> bool:
    """Whether `tensor` is an FSDP shard (a DTensor), whose full value needs a collective to read."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_main_process() -> bool:
    """True on rank 0 or without a launcher (readable before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def _warn_ignored_fsdp_settings() -> None:
    """accelerate passes its fsdp_config as FSDP_* variables; unigame's sharding is fixed (FSDP2, one unit
    per decoder layer, no offload), so say so when the config asks for something else."""
    asked = {
        "fsdp_version": os.environ.get("FSDP_VERSION", "2"),
        "fsdp_offload_params": os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower(),
    }
    ignored = {k: v for k, v in asked.items() if v not in ("2", "false")}
    if ignored:
        warnings.warn(
            f"the accelerate config asks for {ignored}, which unigame ignores: it shards the language model "
            "with FSDP2 (fsdp_version 2), one unit per decoder layer, without CPU offload; set those keys "
            "as in configs/accelerate/fsdp.yaml to silence this.",
            stacklevel=3,
        )


class Distributed:
    """Rank, world size and device of this process, and the collectives the trainer calls.

    Build it with `from_environment`; the constructor is the one-process default.
    """

    def __init__(self, device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> None:
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        self.mixed_precision: str | None = None  # what the launcher asked for (`--mixed_precision`)
        self.fsdp = False  # shard the language model's decoder layers (`shard_language_model`)

    @classmethod
    def from_environment(cls, device: str) -> Distributed:
        """One process, or the group a launcher set up (WORLD_SIZE > 1): then each process takes
        `cuda:LOCAL_RANK` for `model.device: cuda`, or the CPU (gloo) for `model.device: cpu`."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device)
        kind, _, index = device.partition(":")
        if index:
            raise ValueError(
                f"model.device={device!r} names one device, but this is a {world_size}-process run where each "
                f"process takes its own ({kind}:LOCAL_RANK); set model.device {kind}."
            )
        from accelerate import PartialState

        state = PartialState(cpu=kind == "cpu")
        if state.num_processes != world_size:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but accelerate set up {state.num_processes} processes."
            )
        device = torch.device("cpu") if state.device.type == "cpu" else state.device  # not "cpu:0"
        dist = cls(device, state.process_index, state.num_processes)
        dist.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
        dist.fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if dist.fsdp:
            _warn_ignored_fsdp_settings()
        if dist.device.type == "cuda":
            torch.cuda.set_device(dist.device)
        return dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (all of them in one process)."""
        return shard_slice(n, self.rank, self.world_size)

    # ------------------------------------------------------------------------------------- FSDP
    def shard_language_model(self, model: nn.Module) -> list[nn.Module]:
        """FSDP2-shard the decoder layers that hold LoRA, one `fully_shard` per layer, then their parent
        (the language model) as the root; return the sharded layers. No-op unless `self.fsdp`.

        Call it after LoRA is attached (FSDP replaces the parameters it shards, so optimisers are built
        after it). The layers are the entries of the `nn.ModuleList` holding LoRA weights; LoRA anywhere
        else is refused. The root's
        embedding tables stay replicated (`ignored_params`): the adapter looks them up outside the
        language model's `forward`, where FSDP would not gather them. Modules outside the language model
        (vision, VQ, heads) are not touched, so they stay replicated too.
        """
        if not self.fsdp or self.world_size == 1:
            return []
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        lists = [
            (name, m)
            for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and any(p.requires_grad for p in m.parameters())
        ]
        if len(lists) != 1:
            raise ValueError(
                f"FSDP shards the one layer list that holds LoRA, but found {len(lists)} "
                f"({[n for n, _ in lists]}); launch with the DDP config (configs/accelerate/ddp.yaml)."
            )
        name, layers = lists[0]
        outside = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(name + ".")]
        if outside:  # the checkpoint code re-shards every LoRA tensor alike, so all of them must be sharded
            raise ValueError(
                f"FSDP shards the layers of {name}, but LoRA also trains {outside[:3]} outside them; "
                "launch with the DDP config (configs/accelerate/ddp.yaml)."
            )
        root = model.get_submodule(name.rpartition(".")[0])  # e.g. model.language_model
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        embeddings = {p for m in root.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        fully_shard(root, mesh=mesh, ignored_params=embeddings)
        return list(layers)

    def full_tensor(self, tensor: Tensor) -> Tensor:
        """The whole value of an FSDP shard (a collective: every rank must call it), else `tensor`."""
        return tensor.full_tensor() if is_sharded(tensor) else tensor

    def shard_like(self, full: Tensor, like: Tensor) -> Tensor:
        """This rank's shard of `full`, laid out as the FSDP parameter `like` (every rank holds `full`)."""
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(self.device), like.device_mesh, like.placements)

    # ------------------------------------------------------------------------------- collectives
    def average_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (DDP's all-reduce), in one flat bucket.

        A parameter without a gradient on some rank counts as zero there; it keeps no gradient only
        when no rank produced one, so every rank's optimiser updates the same parameters.
        """
        params = list(parameters)
        if self.world_size == 1 or not params:  # FSDP with all of LoRA sharded: nothing left to reduce
            return
        import torch.distributed as tdist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])  # (P,) every gradient, fp32
        present = torch.tensor([float(p.grad is not None) for p in params], device=flat.device)  # (n,)
        tdist.all_reduce(flat)
        tdist.all_reduce(present)
        flat /= self.world_size
        offset = 0
        for p, had in zip(params, present.tolist()):
            size = p.numel()
            if had > 0:
                p.grad = flat[offset : offset + size].view_as(p).to(p.dtype)
            offset += size

    def all_true(self, flag: bool) -> bool:
        """True when `flag` holds on every rank, so all ranks take the same branch (skip or step)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as tdist

        value = torch.tensor([float(flag)], device=self.device)
        tdist.all_reduce(value, op=tdist.ReduceOp.MIN)
        return bool(value.item() > 0)

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` (same shape on each) concatenated along dim 0 in rank order."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as tdist

        local = tensor.detach().contiguous().to(self.device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        tdist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    def mean_metrics(self, metrics: dict[str, float], names: Sequence[str]) -> dict[str, float]:
        """Each metric's mean over the ranks that report it (a NaN or a missing key does not count)."""
        if self.world_size == 1:
            return metrics
        import torch.distributed as tdist

        values = [metrics.get(n, math.nan) for n in names]
        known = [v is not None and math.isfinite(float(v)) for v in values]
        sums = torch.tensor(
            [float(v) if ok else 0.0 for v, ok in zip(values, known)] + [float(ok) for ok in known],
            dtype=torch.float64,
            device=self.device,
        )  # (2M,) values then counts
        tdist.all_reduce(sums)
        total, count = sums[: len(names)].tolist(), sums[len(names) :].tolist()
        reduced = {n: t / c for n, t, c in zip(names, total, count) if c > 0}
        reduced.update({n: metrics[n] for n in names if n in metrics and n not in reduced})  # NaN everywhere
        return reduced

    def broadcast(self, tensors: Sequence[Tensor]) -> None:
        """Overwrite `tensors` in place with rank 0's values."""
        if self.world_size == 1:
            return
        import torch.distributed as tdist

        for t in tensors:
            tdist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cached model), the others after it finished."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()
