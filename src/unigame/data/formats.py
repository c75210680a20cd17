"""Writers that export `VQARecord`s in public benchmark layouts (VQAv2, POPE, NaturalBench,
GenEval image folders) and as a Hugging Face `datasets.Dataset`.

Why: our synthetic data (and our models' generations) can then be scored by the official
tools, and every writer is checked by reading its output back with `unigame.data.loaders`.
Images are written as lossless PNG so round trips are pixel-exact; JSON files are written
atomically (temporary file + rename), so an interrupted export never leaves a truncated file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unigame.data.loaders import GenEvalPrompt, load_image
from unigame.data.records import VQARecord
from unigame.files import write_atomic

if TYPE_CHECKING:
    import datasets

__all__ = [
    "VQAv2Files",
    "to_hf_dataset",
    "write_geneval_images",
    "write_naturalbench",
    "write_pope",
    "write_vqav2",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class VQAv2Files:
    """Where `write_vqav2` put its output (the three arguments `load_vqav2` takes)."""

    questions_json: Path
    annotations_json: Path
    images_dir: Path


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def _record_image(record: VQARecord) -> np.ndarray:
    """The record's image as (H, W, 3) uint8, decoding ``image_path`` if it is not in memory."""
    try:
        return load_image(record)
    except ValueError as err:
        raise ValueError(f"cannot export record {record.id!r}: {err}") from err


def _image_key(image: np.ndarray) -> str:
    """Content hash: identical pixels share one file and one image id."""
    digest = hashlib.sha1(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _yes_no(record: VQARecord) -> str:
    label = record.answer.strip().lower()
    if label not in ("yes", "no"):
        raise ValueError(f"record {record.id!r}: a yes/no answer is required, got {record.answer!r}")
    return label


def _qid(record_id: str) -> int | str:
    """Numeric ids are written as integers (as the public files have them), others verbatim."""
    return int(record_id) if record_id.isdecimal() else record_id


# ---------------------------------------------------------------------------------------------
# VQAv2
# ---------------------------------------------------------------------------------------------


def _answer_type(answer: str) -> str:
    if answer.strip().lower() in ("yes", "no"):
        return "yes/no"
    return "number" if answer.strip().isdecimal() else "other"


def write_vqav2(records: Sequence[VQARecord], out_dir: PathLike, split: str = "val2014") -> VQAv2Files:
    """Write records as a VQAv2 split: questions JSON, annotations JSON and a COCO-style image folder.

    Files: ``v2_OpenEnded_mscoco_{split}_questions.json``, ``v2_mscoco_{split}_annotations.json``
    and ``{split}/COCO_{split}_{image_id:012d}.png``. Identical images share one image_id
    (numbered from 1 in order of first use). question_id is ``int(record.id)`` when every id is
    a decimal number, else ``image_id * 1000 + k`` (VQAv2's own scheme: k-th question on that
    image), so the loader's ids differ from non-numeric input ids. Reference answers: the
    record's ``answers`` when it has two or more (as many as it has), else its one answer ten
    times (one true answer on synthetic data = ten agreeing annotators; VQA accuracy leaves one
    reference out, so a single reference would score 0 whatever the prediction). answer_type/question_type come from
    ``meta`` when present, else are inferred ("yes/no"/"number"/"other", "none of the above").
    """
    out = Path(out_dir)
    images_dir = out / split
    image_ids: dict[str, int] = {}
    per_image_count: dict[int, int] = {}
    numeric = all(r.id.isdecimal() for r in records)
    questions, annotations, seen = [], [], set()
    for record in records:
        image = _record_image(record)
        key = _image_key(image)
        if key not in image_ids:
            image_ids[key] = len(image_ids) + 1
            _save_png(image, images_dir / f"COCO_{split}_{image_ids[key]:012d}.png")
        image_id = image_ids[key]
        k = per_image_count.get(image_id, 0)
        per_image_count[image_id] = k + 1
        qid = int(record.id) if numeric else image_id * 1000 + k
        if qid in seen:
            raise ValueError(f"duplicate question id {qid} (record {record.id!r})")
        seen.add(qid)
        # VQA accuracy leaves one reference out: a single reference answer could never score
        answers = (
            list(record.answers) if len(record.answers) > 1 else [(record.answers or [record.answer])[0]] * 10
        )
        questions.append({"image_id": image_id, "question": record.question, "question_id": qid})
        annotations.append(
            {
                "question_id": qid,
                "image_id": image_id,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                    for j, a in enumerate(answers)
                ],
                "multiple_choice_answer": record.answer,
                "answer_type": record.meta.get("answer_type") or _answer_type(record.answer),
                "question_type": record.meta.get("question_type") or "none of the above",
            }
        )
    info = {"description": "exported by unigame", "version": "2.0"}
    files = VQAv2Files(
        questions_json=out / f"v2_OpenEnded_mscoco_{split}_questions.json",
        annotations_json=out / f"v2_mscoco_{split}_annotations.json",
        images_dir=images_dir,
    )
    qdoc = {
        "info": info,
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {},
        "data_subtype": split,
        "questions": questions,
    }
    adoc = {"info": info, "license": {}, "data_subtype": split, "annotations": annotations}
    write_atomic(files.questions_json, json.dumps(qdoc))
    write_atomic(files.annotations_json, json.dumps(adoc))
    return files


# ---------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------


def write_pope(records: Sequence[VQARecord], path: PathLike, images_dir: PathLike | None = None) -> Path:
    """Write a POPE question file: JSON lines of question_id, image, text, label.

    Answers must be yes/no. Images go to ``images_dir`` (default: an ``images`` folder beside
    ``path``) as COCO-style names, identical images written once; ``image`` holds the file name
    relative to that folder, so ``load_pope(path, images_dir)`` reads it back. Name the file like
    the originals (coco_pope_random.json) so the loader can tell the split.
    """
    path = Path(path)
    img_dir = Path(images_dir) if images_dir is not None else path.parent / "images"
    names: dict[str, str] = {}
    rows = []
    for record in records:
        label = _yes_no(record)
        image = _record_image(record)
        key = _image_key(image)
        if key not in names:
            names[key] = f"COCO_val2014_{len(names) + 1:012d}.png"
            _save_png(image, img_dir / names[key])
        rows.append(
            {"question_id": _qid(record.id), "image": names[key], "text": record.question, "label": label}
        )
    write_atomic(path, _jsonl(rows))
    return path


# ---------------------------------------------------------------------------------------------
# NaturalBench
# ---------------------------------------------------------------------------------------------


def _nb_question_type(record: VQARecord, answers: list[str]) -> str:
    given = record.meta.get("question_type")
    if given is not None:
        return str(given)
    lowered = {a.strip().lower() for a in answers}
    if lowered <= {"yes", "no"}:
        return "yes_no"
    if lowered <= {"a", "b"}:
        return "multiple_choice"
    raise ValueError(
        f"NaturalBench group of record {record.id!r}: answers {sorted(lowered)} are neither yes/no nor A/B; "
        "set meta['question_type']"
    )


def write_naturalbench(records: Sequence[VQARecord], out_dir: PathLike) -> Path:
    """Write records as NaturalBench rows (``out_dir/naturalbench.jsonl`` + ``out_dir/images``).

    Records are grouped by ``meta["group"]``; each group must hold exactly the four items
    (``meta["question_index"]`` j, ``meta["image_index"]`` k in {0, 1}), the same question text
    for a given j and the same image for a given k. One row per group, in order of first
    appearance: Index (the group), Image_0/Image_1 (paths relative to the jsonl), Question_0/1,
    Image_{k}_Question_{j} answers, Question_Type (``meta["question_type"]``, else inferred).
    """
    out = Path(out_dir)
    groups: dict[Any, dict[tuple[int, int], VQARecord]] = {}
    for record in records:
        try:
            group, j, k = (
                record.meta["group"],
                int(record.meta["question_index"]),
                int(record.meta["image_index"]),
            )
        except KeyError as err:
            raise ValueError(
                f"record {record.id!r}: NaturalBench export needs meta[{err.args[0]!r}]"
            ) from err
        if j not in (0, 1) or k not in (0, 1):
            raise ValueError(f"record {record.id!r}: question_index/image_index must be 0 or 1, got {j}, {k}")
        items = groups.setdefault(group, {})
        if (j, k) in items:
            raise ValueError(f"NaturalBench group {group!r} has two records for question {j} on image {k}")
        items[(j, k)] = record
    rows = []
    for row_index, (group, items) in enumerate(groups.items()):
        missing = [f"q{j}_i{k}" for j in (0, 1) for k in (0, 1) if (j, k) not in items]
        if missing:
            raise ValueError(f"NaturalBench group {group!r} is missing {missing}")
        row: dict[str, Any] = {"Index": group}
        for k in (0, 1):
            image = _record_image(items[(0, k)])
            if not np.array_equal(image, _record_image(items[(1, k)])):
                raise ValueError(
                    f"NaturalBench group {group!r}: the two questions on image {k} use different images"
                )
            rel = f"images/{row_index:05d}_{k}.png"
            _save_png(image, out / rel)
            row[f"Image_{k}"] = rel
        for j in (0, 1):
            if items[(j, 0)].question != items[(j, 1)].question:
                raise ValueError(f"NaturalBench group {group!r}: question {j} differs between the two images")
            row[f"Question_{j}"] = items[(j, 0)].question
        for k in (0, 1):
            for j in (0, 1):
                row[f"Image_{k}_Question_{j}"] = items[(j, k)].answer
        row["Question_Type"] = _nb_question_type(items[(0, 0)], [r.answer for r in items.values()])
        rows.append(row)
    path = out / "naturalbench.jsonl"
    write_atomic(path, _jsonl(rows))
    return path


# ---------------------------------------------------------------------------------------------
# GenEval image folders
# ---------------------------------------------------------------------------------------------


def write_geneval_images(
    prompts: Sequence[GenEvalPrompt | Mapping[str, Any]],
    images_per_prompt: Sequence[Sequence[np.ndarray]],
    out_dir: PathLike,
) -> list[Path]:
    """Write generated images in the folder layout GenEval's evaluate_images.py reads.

    ``out_dir/{index:05d}/metadata.jsonl`` holds the prompt's original metadata line and
    ``out_dir/{index:05d}/samples/{k:04d}.png`` its k-th image. ``index`` is
    ``GenEvalPrompt.index`` (the line number in evaluation_metadata.jsonl, so a subset keeps its
    folder names), or the position in ``prompts`` for plain metadata dicts. Returns the folders.
    """
    if len(prompts) != len(images_per_prompt):
        raise ValueError(f"got {len(prompts)} prompts but {len(images_per_prompt)} image lists")
    out = Path(out_dir)
    folders = []
    for position, (prompt, images) in enumerate(zip(prompts, images_per_prompt, strict=True)):
        if isinstance(prompt, GenEvalPrompt):
            index, metadata = prompt.index, prompt.metadata
        else:
            index, metadata = position, dict(prompt)
        if not metadata.get("prompt"):
            raise ValueError(f"GenEval prompt #{position} has no 'prompt' in its metadata")
        folder = out / f"{index:05d}"
        for k, image in enumerate(images):
            arr = np.asarray(image)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ValueError(
                    f"GenEval prompt #{position}, image {k}: expected (H, W, 3) uint8, got {arr.shape} {arr.dtype}"
                )
            _save_png(arr, folder / "samples" / f"{k:04d}.png")
        write_atomic(folder / "metadata.jsonl", json.dumps(metadata) + "\n")
        folders.append(folder)
    return folders


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------------


def _json_meta(meta: Mapping[str, Any]) -> str:
    """meta as JSON, leaving out raw image bytes (they become the image column instead)."""

    def plain(value: Any) -> bool:
        if isinstance(value, bytes | bytearray):
            return False
        if isinstance(value, list | tuple):
            return all(plain(v) for v in value)
        return True

    return json.dumps({k: v for k, v in meta.items() if plain(v)}, default=str)


def to_hf_dataset(records: Sequence[VQARecord]) -> datasets.Dataset:
    """Records as a `datasets.Dataset` with columns id, question, answer, answers, caption,
    meta (a JSON string, so heterogeneous meta fits one column) and image (an Image feature;
    in-memory arrays are encoded as PNG, paths are referenced, records without images get None)."""
    import datasets  # heavy; only needed here
    from PIL import Image

    def image_cell(record: VQARecord) -> Any:
        if record.image is not None:
            return Image.fromarray(load_image(record))
        data = record.meta.get("image_bytes")
        if isinstance(data, bytes):
            return {"bytes": data, "path": None}
        if record.image_path:
            return {"bytes": None, "path": record.image_path}
        return None

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "caption": datasets.Value("string"),
            "meta": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )
    columns = {
        "id": [r.id for r in records],
        "question": [r.question for r in records],
        "answer": [r.answer for r in records],
        "answers": [list(r.answers) for r in records],
        "caption": [r.caption for r in records],
        "meta": [_json_meta(r.meta) for r in records],
        "image": [image_cell(r) for r in records],
    }
    return datasets.Dataset.from_dict(columns, features=features)
