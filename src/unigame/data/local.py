"""Training records from local files in public formats: VQAv2 questions + annotations + COCO images,
plus an optional image-caption set (a CC3M-style subset).

Every record is checked and its image decoded, converted to RGB and brought to one square size
once, before training starts. Why up front: a bad record is found and named before step 1 (not
hours in), and the record list, hence the seeded data order and exact resume, is fixed for the
whole run. The cost is memory: one (size, size, 3) uint8 array per distinct image (442 KB at
384 px; records asking about the same image share it), so `max_items` takes a subset of a large
split.

Policy for bad records (see docs/reliability.md): a record whose row, text or image is unusable is
left out and reported with its id and the reason; convertible images (grayscale, 16-bit, RGBA,
CMYK, palette) are converted, not dropped. More than `max_bad_fraction` bad records, or none
usable at all, is an error: that is a wrong path or a broken export, not web noise.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from unigame.data.loaders import (
    CAPTION_PROMPT,
    MAX_IMAGE_PIXELS,
    DataFormatError,
    load_captions,
    load_image,
    load_vqav2,
)
from unigame.data.pixels import square_resize
from unigame.data.records import VQARecord

__all__ = ["BadRecord", "BadRecordsError", "LocalData", "load_local_training_data", "write_bad_records"]

PathLike = str | os.PathLike[str]
_SHOWN = 10  # bad records named in an error message (the bad-records file lists all)


@dataclass(frozen=True)
class BadRecord:
    """A record left out of training: its id (or row, when no id could be read), file and reason."""

    id: str
    file: str
    problem: str

    @classmethod
    def from_error(cls, err: DataFormatError) -> BadRecord:
        where = err.record_id if err.record_id is not None else (err.row or "<whole file>")
        problem = f"field {err.field!r}: {err.problem}" if err.field else err.problem
        return cls(where, err.file, problem)


class BadRecordsError(ValueError):
    """Too many (or all) records are bad; the message counts them and names the first few."""


@dataclass
class LocalData:
    """Usable records (images decoded to (size, size, 3) uint8) and the bad ones left out."""

    records: list[VQARecord]
    bad: list[BadRecord] = field(default_factory=list)
    examined: int = 0


def load_local_training_data(
    questions: PathLike,
    annotations: PathLike,
    images: PathLike,
    image_size: int,
    *,
    captions: PathLike | None = None,
    caption_images: PathLike | None = None,
    caption_prompt: str = CAPTION_PROMPT,
    max_items: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bad_fraction: float = 0.5,
) -> LocalData:
    """Read a VQAv2 split (and an optional caption set) into checked, decoded training records.

    ``max_items`` caps the VQAv2 records (the first usable ones in file order); the caption set is
    used whole. Raises `BadRecordsError` as soon as more than ``max_bad_fraction`` of the records
    are bad (so an all-bad set fails after looking at about that fraction of it) or none is usable.
    """
    vqa = load_vqav2(questions, annotations, images, skip_bad=True)
    sets = [(vqa, max_items, str(questions))]
    if captions is not None:
        loaded = load_captions(captions, caption_images, prompt=caption_prompt, skip_bad=True)
        sets.append((loaded, None, str(captions)))
    total = sum(len(loaded) + len(loaded.skipped) for loaded, _, _ in sets)
    data = LocalData([])
    decoded: dict[str, np.ndarray] = {}  # image path -> resized image, shared by its records
    seen: set[str] = set()

    def reject(bad: BadRecord) -> None:
        data.bad.append(bad)
        data.examined += 1
        if len(data.bad) > max_bad_fraction * total:
            raise _too_many(data, total, max_bad_fraction, finished=False)

    for loaded, cap, file in sets:
        for err in loaded.skipped:
            reject(BadRecord.from_error(err))
        taken = 0
        for record in loaded:
            if cap is not None and taken >= cap:
                break
            if record.id in seen:  # VQAv2 ids are question ids; caption ids come from another file
                reject(BadRecord(record.id, file, "duplicate id: a VQAv2 question has it too"))
                continue
            try:
                image = decoded.get(record.image_path) if record.image_path else None
                if image is None:
                    image = square_resize(load_image(record, max_pixels), image_size)  # (S, S, 3)
                    if record.image_path:
                        decoded[record.image_path] = image
            except DataFormatError as err:
                reject(BadRecord.from_error(err))
                continue
            record.image = image
            record.meta.pop("image_bytes", None)  # decoded now: do not hold the bytes twice
            data.records.append(record)
            seen.add(record.id)
            data.examined += 1
            taken += 1
    if not data.records or len(data.bad) > max_bad_fraction * data.examined:
        raise _too_many(data, total, max_bad_fraction, finished=True)
    return data


def _too_many(data: LocalData, total: int, max_bad_fraction: float, finished: bool) -> BadRecordsError:
    shown = "\n  ".join(f"{b.id}: {b.problem} ({b.file})" for b in data.bad[:_SHOWN])
    if data.records:
        what = "too many bad records"
    else:
        what = "no usable record" if finished else "too many bad records, none usable so far"
    return BadRecordsError(
        f"{what}: {len(data.bad)} bad of {data.examined} examined ({total} in the files; "
        f"data.max_bad_fraction={max_bad_fraction}). Check the data paths and files. First bad records:\n  "
        + shown
    )


def write_bad_records(bad: list[BadRecord], path: PathLike) -> Path:
    """Write one JSON line per bad record (id, file, problem) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(asdict(b)) + "\n" for b in bad), encoding="utf-8")
    return path
