"""Hard-sample buffer B: the hardest filtered adversarial latents, kept for replay in the understanding step.

Following UniGame (arXiv 2511.19413, Algorithm 1 and §3.3), each mining batch scores every decoded
candidate x̃ by its hardness H = per-sample cross-entropy of the understanding branch, sets
τ = the q-th percentile (q = 60) of H within that batch, and keeps the candidates with H ≥ τ that
passed the semantic filter. The buffer holds at most ``capacity`` items (paper 50) ranked by H: when
full, a new item replaces the lowest-H item only if it is strictly harder.

What is stored: the perturbed **latent** z̃ (detached, on ``device``, CPU by default) plus the item id
and a small JSON-able payload (question, answer, caption) — not the decoded image. The trainer
re-decodes z̃ on replay; a Janus latent of 576 tokens × 8 floats is ~18 KiB against ~600 KiB for a
384² float32 image, which is what makes capacities beyond 50 affordable.

Slots keep their insertion order (an evicted item's slot is reused in place), and sampling indexes
slots, so the same buffer state and generator state always give the same replay batch; the state
dict stores slots in that order, so a resumed run samples exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["HardSampleBuffer", "MineStats", "percentile_threshold"]

ItemId = str | int


def percentile_threshold(hardness: Tensor, q: float = 60.0) -> float:
    """Return τ = the q-th percentile (q in [0, 100]) of a mining batch's per-sample hardness H [B].

    Uses ``torch.quantile(H, q/100, interpolation="linear")`` in float64: with the batch sorted
    ascending as h_0 ≤ … ≤ h_{B-1}, τ interpolates linearly between h_⌊r⌋ and h_⌈r⌉ at rank
    r = (q/100)·(B−1) (numpy's default "linear" method). So q = 0 gives min(H), q = 100 max(H), and
    for B = 1 τ = H itself (the single item is always a candidate).
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r} (the paper uses 60).")
    h = _check_hardness(hardness, None)
    if h.numel() == 0:
        raise ValueError("percentile_threshold needs at least one hardness value; the mining batch is empty.")
    return float(torch.quantile(h, q / 100.0, interpolation="linear"))


@dataclass(frozen=True)
class MineStats:
    """What one mining call did; log it every mining step (counts are out of the mining batch B)."""

    tau: float  # hardness threshold τ (q-th percentile of H in this batch)
    n_candidates: int  # items with H ≥ τ
    n_passed_filter: int  # items that passed the semantic filter (regardless of H)
    n_eligible: int  # items with H ≥ τ AND passed the filter: the ones offered to the buffer
    n_pushed: int  # eligible items present in the buffer after the call (entered and not evicted)
    inserted: tuple[int, ...] = ()  # their indices in the mining batch (len n_pushed)


def _check_hardness(hardness: Tensor, batch: int | None) -> Tensor:
    """Return hardness as a detached float64 CPU vector [B], rejecting non-finite values and bad shapes."""
    h = torch.as_tensor(hardness).detach().to(device="cpu", dtype=torch.float64).reshape(-1)  # (B,)
    if batch is not None and h.numel() != batch:
        raise ValueError(
            f"hardness has {h.numel()} values but the batch has {batch} items; pass one per item."
        )
    bad = (~torch.isfinite(h)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"hardness must be finite; got {h[bad[0]].item()} at batch index {bad[0]} ({len(bad)} non-finite "
            "in all). Catch non-finite understanding losses before mining."
        )
    return h


def _json_roundtrip(value: Any, what: str) -> Any:
    """Return value as it reads back from JSON, so checkpointed and live buffers hold identical payloads."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{what} is not JSON-serialisable ({err}); store only small text/number fields "
            "(question, answer, caption), never images or tensors."
        ) from err


class HardSampleBuffer:
    """Fixed-capacity store of the hardest adversarial latents, ranked by hardness H (lowest evicted).

    Args:
        capacity: maximum number of items (paper 50).
        device: where latents are kept (CPU by default; replay moves them with ``sample(..., device=)``).

    All latents must share one shape and dtype (the first push fixes them).
    """

    def __init__(self, capacity: int = 50, device: str | torch.device = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r} (the paper uses 50).")
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self._latents: list[Tensor] = []  # per slot: one item's latent (...)
        self._hardness: list[float] = []  # per slot: H of that item
        self._ids: list[ItemId] = []
        self._payload: list[dict[str, Any]] = []
        self._serial: list[int] = []  # per slot: insertion counter, to count survivors of one push
        self._next_serial = 0
        self._item_shape: tuple[int, ...] | None = None
        self._item_dtype: torch.dtype | None = None

    # ----------------------------------------------------------------------------------------- adding
    def push(
        self,
        latents: Tensor,
        hardness: Tensor,
        ids: Sequence[ItemId],
        payload: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        """Offer a batch of items, in order; return how many of them are in the buffer afterwards.

        latents: (B, ...) perturbed latents z̃; hardness: (B,) per-sample CE; ids: B item ids (str or
        int); payload: B small JSON-able dicts (default empty). An item is added while there is room;
        once full it replaces the lowest-H item (the first such slot on ties) only if strictly harder.
        """
        batch = latents.shape[0]
        h = _check_hardness(hardness, batch)  # (B,) float64
        if len(ids) != batch:
            raise ValueError(f"got {len(ids)} ids for a batch of {batch} latents; pass one id per item.")
        payload = [{} for _ in range(batch)] if payload is None else list(payload)
        if len(payload) != batch:
            raise ValueError(f"got {len(payload)} payload dicts for a batch of {batch}; pass one per item.")
        self._check_item_layout(latents)
        return len(self._push(latents, h, ids, payload))

    def mine(
        self,
        latents: Tensor,
        hardness: Tensor,
        passed_filter_mask: Tensor,
        ids: Sequence[ItemId],
        payload: Sequence[dict[str, Any]] | None = None,
        percentile: float = 60.0,
    ) -> MineStats:
        """Push the items with H ≥ τ (τ = `percentile_threshold` of this batch) that passed the filter.

        latents: (B, ...) candidate latents z̃; hardness: (B,) per-sample CE on the decoded x̃;
        passed_filter_mask: (B,) bool from the semantic filter. τ is computed over the whole batch
        (filtered-out items included), as in the paper's Algorithm 1.
        """
        batch = latents.shape[0]
        h = _check_hardness(hardness, batch)  # (B,) float64
        passed = torch.as_tensor(passed_filter_mask).detach().to("cpu").reshape(-1).bool()  # (B,)
        if passed.numel() != batch:
            raise ValueError(f"passed_filter_mask has {passed.numel()} entries for a batch of {batch}.")
        if len(ids) != batch or (payload is not None and len(payload) != batch):
            raise ValueError(f"ids and payload must have one entry per item (batch of {batch}).")
        tau = percentile_threshold(h, percentile)
        candidate = h >= tau  # (B,)
        eligible = candidate & passed  # (B,)
        keep = eligible.nonzero().flatten().tolist()
        inserted: list[int] = []
        if keep:
            self._check_item_layout(latents)
            kept = self._push(
                latents[keep],
                h[keep],
                [ids[i] for i in keep],
                [{} for _ in keep] if payload is None else [payload[i] for i in keep],
            )
            inserted = [keep[j] for j in kept]
        return MineStats(
            tau=tau,
            n_candidates=int(candidate.sum()),
            n_passed_filter=int(passed.sum()),
            n_eligible=len(keep),
            n_pushed=len(inserted),
            inserted=tuple(inserted),
        )

    def update_hardness(self, indices: Tensor | Sequence[int], hardness: Tensor) -> None:
        """Set new H for slots returned by `sample_indices` (valid until the next push), e.g. after replay."""
        idx = torch.as_tensor(indices).reshape(-1).tolist()
        h = _check_hardness(hardness, len(idx))
        for i, value in zip(idx, h.tolist()):
            self._hardness[i] = value

    # ---------------------------------------------------------------------------------------- replay
    def sample_indices(self, k: int, generator: torch.Generator) -> Tensor:
        """Return k slot indices (int64, CPU) drawn uniformly; with replacement only when k > len(self).

        ``generator`` must be a CPU generator; it alone determines the draw for a given buffer state.
        """
        n = len(self)
        if n == 0:
            raise ValueError("cannot sample from an empty hard-sample buffer; check len(buffer) first.")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}.")
        if k <= n:
            return torch.randperm(n, generator=generator)[:k]  # (k,) distinct slots
        return torch.randint(n, (k,), generator=generator)  # (k,) with replacement

    def gather(
        self, indices: Tensor | Sequence[int], device: str | torch.device | None = None
    ) -> tuple[Tensor, list[ItemId], list[dict[str, Any]]]:
        """Return (latents (k, ...), ids, payload) of the given slots; latents on ``device`` (default the buffer's)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        if idx:
            latents = torch.stack([self._latents[i] for i in idx])  # (k, ...) stored latents
        else:
            latents = torch.empty((0, *(self._item_shape or ())), dtype=self._item_dtype, device=self.device)
        if device is not None:
            latents = latents.to(device)
        return latents, [self._ids[i] for i in idx], [dict(self._payload[i]) for i in idx]

    def sample(
        self, k: int, generator: torch.Generator, device: str | torch.device | None = None
    ) -> tuple[Tensor, list[ItemId], list[dict[str, Any]]]:
        """Return k replay items (latents (k, ...), ids, payload) drawn by `sample_indices`."""
        return self.gather(self.sample_indices(k, generator), device=device)

    # ------------------------------------------------------------------------------------ inspection
    def __len__(self) -> int:
        return len(self._latents)

    @property
    def hardness(self) -> Tensor:
        """Hardness H of every slot, float64 (len,), in slot order."""
        return torch.tensor(self._hardness, dtype=torch.float64)

    @property
    def ids(self) -> list[ItemId]:
        """Item ids in slot order."""
        return list(self._ids)

    def memory_bytes(self) -> int:
        """Bytes held by the stored latent tensors (ids, payload and Python overhead not counted)."""
        return sum(t.numel() * t.element_size() for t in self._latents)

    # ---------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Return {"latents": (n, ...) tensor, "hardness": (n,) float64 tensor, "metadata": JSON str}.

        The two tensors can go straight into a safetensors file and the metadata string into its
        string metadata; slot order is preserved, so `load_state_dict` restores identical sampling.
        """
        if self._latents:
            latents = torch.stack(self._latents).cpu()  # (n, ...)
        else:
            latents = torch.empty((0, *(self._item_shape or ())), dtype=self._item_dtype or torch.float32)
        metadata = {
            "capacity": self.capacity,
            "ids": self._ids,
            "payload": self._payload,
            "item_shape": None if self._item_shape is None else list(self._item_shape),
        }
        return {
            "latents": latents.contiguous(),
            "hardness": self.hardness,
            "metadata": json.dumps(metadata),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with a `state_dict()`; this buffer's capacity wins over the saved one."""
        meta = json.loads(state["metadata"]) if isinstance(state["metadata"], str) else state["metadata"]
        latents = state["latents"]
        hardness = _check_hardness(state["hardness"], latents.shape[0]).tolist()
        if len(meta["ids"]) != latents.shape[0] or len(meta["payload"]) != latents.shape[0]:
            raise ValueError("buffer state is inconsistent: ids/payload and latents have different lengths.")
        if meta["capacity"] != self.capacity:
            warnings.warn(
                f"hard-sample buffer checkpoint has capacity {meta['capacity']} but this run uses "
                f"{self.capacity}; the run's capacity wins (the hardest items are kept).",
                stacklevel=2,
            )
        self._latents, self._hardness, self._ids, self._payload, self._serial = [], [], [], [], []
        self._next_serial = 0
        shape = meta.get("item_shape")
        self._item_shape = None if shape is None else tuple(shape)
        self._item_dtype = latents.dtype if latents.shape[0] or shape is not None else None
        order = list(range(latents.shape[0]))
        if len(order) > self.capacity:  # keep the hardest, in their original slot order
            order = sorted(sorted(order, key=lambda i: -hardness[i])[: self.capacity])
        for i in order:
            self._append(latents[i], hardness[i], meta["ids"][i], meta["payload"][i])

    # -------------------------------------------------------------------------------------- internals
    def _check_item_layout(self, latents: Tensor) -> None:
        """Fix the item shape/dtype on first use and reject batches that do not match it."""
        shape, dtype = tuple(latents.shape[1:]), latents.dtype
        if self._item_shape is None or self._item_dtype is None:
            self._item_shape, self._item_dtype = shape, dtype
        elif (shape, dtype) != (self._item_shape, self._item_dtype):
            raise ValueError(
                f"latents of shape {shape} and dtype {dtype} do not match the buffer's items "
                f"({self._item_shape}, {self._item_dtype}); one buffer holds one latent layout."
            )

    def _push(
        self, latents: Tensor, hardness: Tensor, ids: Sequence[ItemId], payload: Sequence[dict[str, Any]]
    ) -> list[int]:
        """Offer the items in order; return the indices (into this batch, ascending) of those in the
        buffer afterwards (entered and not evicted by a later item of the same batch)."""
        index_of_serial: dict[int, int] = {}  # insertion counter -> batch index, for the items stored
        for i in range(latents.shape[0]):
            serial = self._next_serial
            self._offer(latents[i], float(hardness[i]), ids[i], payload[i])
            if self._next_serial > serial:
                index_of_serial[serial] = i
        return sorted(index_of_serial[s] for s in self._serial if s in index_of_serial)

    def _offer(self, latent: Tensor, hardness: float, item_id: ItemId, payload: dict[str, Any]) -> None:
        """Add one item if there is room, else replace the lowest-H slot if this item is strictly harder."""
        if len(self) < self.capacity:
            self._append(latent, hardness, item_id, payload)
            return
        weakest = min(range(len(self)), key=self._hardness.__getitem__)  # first slot with the lowest H
        if hardness > self._hardness[weakest]:
            self._store(weakest, latent, hardness, item_id, payload)

    def _append(self, latent: Tensor, hardness: float, item_id: ItemId, payload: dict[str, Any]) -> None:
        """Store an item in a new slot at the end."""
        for store, value in zip(self._slot_lists(), self._prepare(latent, hardness, item_id, payload)):
            store.append(value)

    def _store(
        self, slot: int, latent: Tensor, hardness: float, item_id: ItemId, payload: dict[str, Any]
    ) -> None:
        """Overwrite an existing slot with a new item."""
        for store, value in zip(self._slot_lists(), self._prepare(latent, hardness, item_id, payload)):
            store[slot] = value

    def _slot_lists(self) -> tuple[list[Any], ...]:
        return (self._latents, self._hardness, self._ids, self._payload, self._serial)

    def _prepare(
        self, latent: Tensor, hardness: float, item_id: ItemId, payload: dict[str, Any]
    ) -> tuple[Tensor, float, ItemId, dict[str, Any], int]:
        """Return one slot's values, in `_slot_lists` order, and advance the insertion counter."""
        # A compact detached copy: a view into the mining batch would keep the whole batch alive.
        stored = latent.detach().to(self.device, copy=True).contiguous()
        item_id = _json_roundtrip(item_id, f"id of item {item_id!r}")
        payload = _json_roundtrip(dict(payload), f"payload of item {item_id!r}")
        self._next_serial += 1
        return stored, float(hardness), item_id, payload, self._next_serial - 1
