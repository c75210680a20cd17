"""A deterministic batch iterator over `VQARecord`s whose position is part of the checkpoint.

Epoch e visits the records in the order `np.random.default_rng([seed, e]).permutation(n)`, in
full batches (a remainder smaller than a batch is skipped, so every step sees `batch_size`
items). The position is (epoch, cursor): restoring it continues with exactly the batch an
uninterrupted run would have drawn next. `training_records` builds the records a config names.
With several processes `batch_size` is the global batch: every rank walks the same order and
keeps its `shard` of each batch, so the position is shared.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unigame.data.local import BadRecord
from unigame.data.records import VQARecord
from unigame.train.config import DataConfig

__all__ = ["Batch", "RecordBatches", "check_records", "training_records"]


@dataclass
class Batch:
    """One training batch; `texts` are what the semantic filter compares with (caption, else question)."""

    ids: list[str]
    pixels: Tensor  # (B, 3, H, W) float in [0, 1]
    questions: list[str]
    answers: list[str]
    texts: list[str]


def check_records(records: list[VQARecord]) -> None:
    """Raise naming the first bad record: a missing or malformed image, or an empty question/answer."""
    shape = None
    for record in records:
        image = record.image
        if image is None:
            raise ValueError(f"record {record.id!r} has no decoded image (image is None); load images first.")
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"record {record.id!r} has an image of shape {image.shape} and dtype {image.dtype}; "
                "expected (H, W, 3) uint8."
            )
        if shape is not None and image.shape != shape:
            raise ValueError(f"record {record.id!r} has image shape {image.shape}, others {shape}.")
        shape = image.shape
        if not record.question.strip() or not record.answer.strip():
            raise ValueError(f"record {record.id!r} has an empty question or answer.")


def training_records(cfg: DataConfig) -> tuple[list[VQARecord], list[BadRecord]]:
    """The records `cfg.source` names, and the bad ones left out (always none for ShapesWorld)."""
    if cfg.source == "shapes":
        from unigame.data.splits import build_split

        return build_split("train", cfg.train_items, cfg.split_seed, cfg.shapes), []
    from unigame.data.local import load_local_training_data

    data = load_local_training_data(
        cfg.questions,
        cfg.annotations,
        cfg.images,
        cfg.image_size,
        captions=cfg.captions,
        caption_images=cfg.caption_images,
        caption_prompt=cfg.caption_prompt,
        max_items=cfg.max_items,
        max_pixels=cfg.max_image_pixels,
        max_bad_fraction=cfg.max_bad_fraction,
    )
    return data.records, data.bad


class RecordBatches:
    """Endless, seeded, resumable batches of records; `state_dict()` is the data position."""

    def __init__(
        self,
        records: list[VQARecord],
        batch_size: int,
        seed: int,
        image_size: int | None = None,
        device: str | torch.device = "cpu",
        shard: Callable[[int], slice] | None = None,
    ) -> None:
        if not records:
            raise ValueError("no training records.")
        if batch_size > len(records):
            raise ValueError(
                f"data.batch_size={batch_size} exceeds the {len(records)} training records; "
                "raise data.train_items or lower data.batch_size."
            )
        check_records(records)
        self.records = records
        self.batch_size = batch_size
        self.seed = seed
        self.image_size = image_size
        self.device = torch.device(device)
        self.shard = shard
        # Records asking about the same image share its array: store each image once.
        slot: dict[int, int] = {}
        index = [slot.setdefault(id(r.image), len(slot)) for r in records]
        unique = {i: r.image for i, r in zip(index, records)}
        self._images = torch.from_numpy(
            np.stack([unique[i] for i in range(len(unique))])
        )  # (m, H, W, 3) uint8
        self._image_of = torch.tensor(index)  # (n,) record -> row of _images
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.records))

    def __iter__(self) -> RecordBatches:
        return self

    def __next__(self) -> Batch:
        if self.cursor + self.batch_size > len(self.records):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        index = self._order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        if self.shard is not None:  # several processes: this rank's part of the global batch
            index = index[self.shard(len(index))]
        return self.batch(index.tolist())

    def batch(self, index: list[int]) -> Batch:
        """The batch of the records at `index` (used for replay panels too)."""
        pixels = self._images[self._image_of[index]].permute(0, 3, 1, 2).float().div(255.0)  # (B, 3, H, W)
        if self.image_size is not None and pixels.shape[-1] != self.image_size:
            pixels = F.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        chosen = [self.records[i] for i in index]
        return Batch(
            ids=[r.id for r in chosen],
            pixels=pixels.to(self.device),
            questions=[r.question for r in chosen],
            answers=[r.answer for r in chosen],
            texts=[r.caption or r.question for r in chosen],
        )

    def stream(self, batch_size: int, seed: int) -> RecordBatches:
        """A second stream over the same records, sharing their images: its own batch size, its own
        seeded order and its own position (from the start), sharded alike."""
        if batch_size > len(self.records):
            raise ValueError(f"a batch of {batch_size} exceeds the {len(self.records)} training records.")
        other = copy.copy(self)  # shallow: the image store is shared, not copied
        other.batch_size, other.seed, other.epoch, other.cursor = batch_size, seed, 0, 0
        other._order = other._permutation(0)
        return other

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "n": len(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != len(self.records) or state["seed"] != self.seed:
            raise ValueError(
                f"data position was saved for {state['n']} records with seed {state['seed']}, but this run "
                f"has {len(self.records)} with seed {self.seed}; the data order cannot be resumed."
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)
