"""Readers for public benchmark files on local disk (VQAv2, AdVQA, POPE, NaturalBench, MMMU, GenEval)
and image-caption sets (CC3M-style subsets).

Every loader returns a `Loaded` list: plain `VQARecord`s (a small `GenEvalPrompt` for GenEval)
with images referenced by path and decoded only when `load_image` is called. Schema problems
raise `DataFormatError`, whose message names the file, the row and the field. With
``skip_bad=True`` a bad row is skipped instead, logged, and its error kept in
``Loaded.skipped`` so callers can report how many rows were dropped and why; nothing is ever
skipped silently. Text that is not valid UTF-8 is an error of the row that holds it (the file is
read with `surrogateescape`, so one bad byte does not take the whole file down).
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from unigame.data.records import VQARecord

__all__ = [
    "CAPTION_PROMPT",
    "DataFormatError",
    "GenEvalPrompt",
    "Loaded",
    "MAX_IMAGE_PIXELS",
    "POPE_SPLITS",
    "load_advqa",
    "load_captions",
    "load_geneval_prompts",
    "load_image",
    "load_images",
    "load_mmmu",
    "load_naturalbench",
    "load_pope",
    "load_vqav2",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PathLike = str | os.PathLike[str]

# Decompression-bomb guard: an image of more pixels is refused before it is decoded (PIL's own
# guard only warns below 2x its limit). 40 MP holds any camera photo; CC3M/COCO are ~0.3 MP.
MAX_IMAGE_PIXELS = 40_000_000


class DataFormatError(ValueError):
    """A benchmark file does not have the expected layout.

    ``file``, ``row`` (e.g. "line 3 (question_id 42)", "questions[5]", or None for whole-file
    problems) and ``field`` are kept as attributes; the message names all three. ``record_id`` is
    the id of the record the row would have become, once the row got that far (else None).
    """

    def __init__(
        self,
        file: PathLike,
        row: str | None,
        field: str | None,
        problem: str,
        record_id: str | None = None,
    ) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.problem = problem
        self.record_id = record_id
        where = self.file
        if row is not None:
            where += f", {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


class Loaded(list[T], Generic[T]):
    """The loaded items, plus ``skipped``: the `DataFormatError` of each row skipped under
    ``skip_bad=True`` (always empty otherwise, since a bad row then raises)."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        super().__init__(items)
        self.skipped: list[DataFormatError] = []


@dataclass
class GenEvalPrompt:
    """One line of GenEval's ``evaluation_metadata.jsonl``.

    ``index`` is the line's position among the prompts (GenEval names output folders by it);
    ``metadata`` is the full original row, written back verbatim into each output folder.
    ``include``/``exclude`` entries are dicts with "class", "count" and optionally "color" or
    "position" ([relation, index into include]).
    """

    index: int
    tag: str
    prompt: str
    include: list[dict[str, Any]]
    exclude: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


class _Row:
    """Where a row sits (for error messages) and typed field access."""

    def __init__(self, file: PathLike, where: str, data: Any) -> None:
        self.file = file
        self.where = where
        self.data = data
        self.record_id: str | None = None

    def name(self, label: str, value: Any) -> None:
        """Add the row's id to its location once it is known."""
        self.where = f"{self.where} ({label} {value!r})"
        self.record_id = str(value)

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.file, self.where, field, problem, self.record_id)

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if optional:
                return None
            raise self.error(key, "missing")
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int subclass; a JSON true is never a valid id or count.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.error(key, f"expected {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, str):
            _check_utf8(self, key, value)
        return value

    def text(self, key: str) -> str:
        """A required string field that must hold more than whitespace (questions, answers, captions)."""
        value = self.get(key, str)
        if not value.strip():
            raise self.error(key, "empty")
        return value


def _check_utf8(row: _Row, key: str, value: str) -> None:
    """Bytes that were not UTF-8 come back from `surrogateescape` decoding as lone surrogates."""
    bad = [c for c in value if "\udc80" <= c <= "\udcff"]
    if bad:
        raw = ", ".join(f"0x{ord(c) - 0xDC00:02x}" for c in bad[:3])
        raise row.error(key, f"not valid UTF-8 text (byte(s) {raw}); re-encode the file as UTF-8")


def _collect(
    path: PathLike, rows: Iterable[tuple[str, Any]], parse: Callable[[_Row], list[T]], skip_bad: bool
) -> Loaded[T]:
    """Parse each (location, raw row); on a DataFormatError raise, or skip and record it."""
    out: Loaded[T] = Loaded()
    for where, raw in rows:
        try:
            if isinstance(raw, DataFormatError):
                raise raw
            row = _Row(path, where, raw)
            if not isinstance(raw, dict):
                raise row.error(None, f"expected a JSON object, got {type(raw).__name__}")
            out.extend(parse(row))
        except DataFormatError as err:
            if not skip_bad:
                raise
            out.skipped.append(err)
    if out.skipped:
        logger.warning("%s: skipped %d bad row(s); first: %s", path, len(out.skipped), out.skipped[0])
    return out


def _read_json(path: PathLike) -> Any:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, None, None, f"not valid JSON ({err})") from err


def _iter_jsonl(path: PathLike) -> Iterator[tuple[str, Any]]:
    """(location, object) per non-blank line; an unparseable line yields its DataFormatError."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, DataFormatError(path, where, None, f"not valid JSON ({err})")


def _iter_table(path: PathLike) -> Iterator[tuple[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects) or .parquet file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # a dependency of `datasets`; imported only when needed

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"row {i}", row
    elif suffix == ".json" and _starts_with(path, "["):
        data = _read_json(path)
        for i, row in enumerate(data):
            yield f"row {i}", row
    else:  # .jsonl, or .json holding JSON lines (as POPE's and many exports' .json files do)
        yield from _iter_jsonl(path)


def _starts_with(path: PathLike, char: str) -> bool:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        head = f.read(4096).lstrip()
    return head.startswith(char)


def _image_ref(row: _Row, key: str, base_dir: Path, *, optional: bool = False) -> str | bytes | None:
    """An image field: a path (relative to ``base_dir``) that must exist, or a datasets-style
    {"bytes": ..., "path": ...} struct (bytes win, so Hugging Face parquet exports load as is)."""
    value = row.get(key, (str, dict), optional=optional)
    return None if value is None else _image_value(row, key, value, base_dir)


def _image_value(row: _Row, key: str, value: Any, base_dir: Path) -> str | bytes:
    if not isinstance(value, str | dict):
        raise row.error(key, f"expected an image path or {{'bytes', 'path'}} struct, got {value!r}")
    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, bytes | bytearray) and data:
            return bytes(data)
        value = value.get("path")
        if not isinstance(value, str) or not value:
            raise row.error(key, "image struct has neither bytes nor a path")
    path = Path(value) if os.path.isabs(value) else base_dir / value
    if not path.is_file():
        raise row.error(key, f"image file not found: {path}")
    return str(path)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img: Any) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8. Transparent images are composited on white (as Hugging Face
    image processors do) so transparent pixels do not turn black; 16-bit grayscale (I;16, and I,
    as which PIL may open it) is scaled by 255/65535 (PIL's own conversion clips it, turning most
    pixels white); other modes (L, 1, P, CMYK, YCbCr) use PIL's conversion."""
    from PIL import Image

    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img).astype(np.float64).clip(0, 65535) * (255 / 65535)  # (H, W)
        return np.repeat(np.rint(grey).astype(np.uint8)[:, :, None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _decode(ref: str | bytes, record_id: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    source = ref if isinstance(ref, str) else io.BytesIO(ref)
    label = ref if isinstance(ref, str) else "<embedded image bytes>"

    def error(problem: str) -> DataFormatError:
        return DataFormatError(label, f"id {record_id!r}", "image", problem, record_id)

    try:
        with warnings.catch_warnings():
            # Our own limit below replaces PIL's bomb warning (which names neither record nor file).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_cm = Image.open(source)
        with img_cm as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise error(
                    f"image of {width}x{height} = {width * height:,} pixels exceeds the limit of "
                    f"{max_pixels:,} (decompression-bomb guard); downscale the file or raise the limit"
                )
            img.load()
            return _to_rgb(img)
    except FileNotFoundError as err:
        raise error("image file not found") from err
    except Image.DecompressionBombError as err:
        raise error(f"image refused by the decompression-bomb guard ({err})") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise error(f"cannot decode image ({err})") from err


def load_image(record: VQARecord, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a record's (first) image as an (H, W, 3) uint8 RGB array.

    Uses ``record.image`` when already in memory, else embedded bytes in
    ``record.meta["image_bytes"]`` (parquet exports), else ``record.image_path``. Grayscale,
    16-bit, palette, CMYK and alpha images are converted to RGB (alpha composited on white).
    A file of more than ``max_pixels`` pixels raises `DataFormatError` before it is decoded.
    """
    if record.image is not None:
        arr = np.asarray(record.image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(
                f"record {record.id!r}: image must be (H, W, 3) uint8; got {arr.shape} {arr.dtype}"
            )
        return arr
    data = record.meta.get("image_bytes")
    if isinstance(data, bytes):
        return _decode(data, record.id, max_pixels)
    if record.image_path:
        return _decode(record.image_path, record.id, max_pixels)
    raise ValueError(f"record {record.id!r} has no image, image_path or meta['image_bytes']")


def load_images(record: VQARecord) -> list[np.ndarray]:
    """All images of a record: those in ``meta["image_refs"]`` (MMMU questions can have up to 7),
    else the single image from `load_image`."""
    refs = record.meta.get("image_refs")
    if not refs:
        return [load_image(record)]
    return [_decode(ref, record.id) for ref in refs]


# ---------------------------------------------------------------------------------------------
# VQAv2 / AdVQA
# ---------------------------------------------------------------------------------------------

_IMAGE_EXTS = (".jpg", ".png", ".jpeg")


def _vqa_image_lookup(images_dir: Path, subtype: str | None) -> Callable[[int], str | None]:
    """image_id -> path, trying COCO-2014 names (COCO_val2014_000000000042.jpg) and COCO-2017 names
    (000000000042.jpg, as AdVQA uses), .jpg/.png/.jpeg. Lists the folder once."""
    names = set(os.listdir(images_dir))

    def find(image_id: int) -> str | None:
        stems = ([f"COCO_{subtype}_{image_id:012d}"] if subtype else []) + [f"{image_id:012d}"]
        for stem in stems:
            for ext in _IMAGE_EXTS:
                if stem + ext in names:
                    return str(images_dir / (stem + ext))
        return None

    return find


def load_vqav2(
    questions_json: PathLike,
    annotations_json: PathLike | None,
    images_dir: PathLike | None,
    *,
    skip_bad: bool = False,
    source: str = "vqav2",
) -> Loaded[VQARecord]:
    """Load VQAv2-format questions + annotations (one record per question).

    ``annotations_json`` may be None for unannotated splits (test-dev): answers are then empty.
    ``images_dir`` holds the COCO images; None leaves ``image_path`` unset. The record's
    ``answer`` is the annotation's multiple_choice_answer, ``answers`` the (ten) human answers;
    ``meta`` holds question_id, image_id, question_type, answer_type, split and source.
    """
    qdata = _read_json(questions_json)
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise DataFormatError(questions_json, None, "questions", "expected an object with a 'questions' list")
    subtype = qdata.get("data_subtype") if isinstance(qdata.get("data_subtype"), str) else None

    annotations: dict[int, _Row] | None = None
    if annotations_json is not None:
        adata = _read_json(annotations_json)
        if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
            raise DataFormatError(
                annotations_json, None, "annotations", "expected an object with an 'annotations' list"
            )
        annotations = {}
        for i, raw in enumerate(adata["annotations"]):
            # An annotation's own errors surface when its question is parsed, so skip_bad drops
            # exactly the affected question; one without a usable question_id cannot be matched.
            qid = raw.get("question_id") if isinstance(raw, dict) else None
            if isinstance(qid, int) and not isinstance(qid, bool):
                annotations[qid] = _Row(annotations_json, f"annotations[{i}]", raw)
                annotations[qid].name("question_id", qid)
    find_image = _vqa_image_lookup(Path(images_dir), subtype) if images_dir is not None else None
    first_seen: dict[int, str] = {}

    def parse(row: _Row) -> list[VQARecord]:
        qid = row.get("question_id", int)
        where = row.where
        row.name("question_id", qid)
        if qid in first_seen:
            raise row.error("question_id", f"duplicate id (first at {first_seen[qid]}); the first is kept")
        first_seen[qid] = where
        image_id = row.get("image_id", int)
        question = row.text("question")
        answer, answers = "", []
        meta: dict[str, Any] = {"question_id": qid, "image_id": image_id, "split": subtype, "source": source}
        if annotations is not None:
            ann = annotations.get(qid)
            if ann is None:
                raise row.error("question_id", "no annotation has this question_id")
            answer = ann.text("multiple_choice_answer")
            raw_answers = ann.get("answers", list)
            if not raw_answers:
                raise ann.error("answers", "empty list")
            for j, a in enumerate(raw_answers):
                if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                    raise ann.error(f"answers[{j}].answer", f"expected a string answer, got {a!r}")
                _check_utf8(ann, f"answers[{j}].answer", a["answer"])
                answers.append(a["answer"])
            meta["question_type"] = ann.get("question_type", str, optional=True)
            meta["answer_type"] = ann.get("answer_type", str, optional=True)
        image_path = None
        if find_image is not None:
            image_path = find_image(image_id)
            if image_path is None:
                raise row.error("image_id", f"no image file for image_id {image_id} in {images_dir}")
        return [
            VQARecord(
                id=str(qid),
                question=question,
                answer=answer,
                image_path=image_path,
                answers=answers,
                meta=meta,
            )
        ]

    rows = ((f"questions[{i}]", raw) for i, raw in enumerate(qdata["questions"]))
    return _collect(questions_json, rows, parse, skip_bad)


def load_advqa(
    questions_json: PathLike,
    annotations_json: PathLike | None,
    images_dir: PathLike | None,
    *,
    skip_bad: bool = False,
) -> Loaded[VQARecord]:
    """Load AdVQA, which ships in the VQAv2 question/annotation format (COCO val2017 images,
    named 000000xxxxxx.jpg); ``meta["source"]`` is "advqa"."""
    return load_vqav2(questions_json, annotations_json, images_dir, skip_bad=skip_bad, source="advqa")


# ---------------------------------------------------------------------------------------------
# Image-caption sets (CC3M-style subsets)
# ---------------------------------------------------------------------------------------------

CAPTION_PROMPT = "Describe the image."


def _iter_tsv(path: PathLike) -> Iterator[tuple[str, Any]]:
    """Rows of a tab-separated file whose first line names the columns, as dicts."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            cells = line.rstrip("\r\n").split("\t")
            if len(cells) != len(header):
                yield (
                    f"line {lineno}",
                    DataFormatError(
                        path,
                        f"line {lineno}",
                        None,
                        f"expected {len(header)} tab-separated cells, got {len(cells)}",
                    ),
                )
            else:
                yield f"line {lineno}", dict(zip(header, cells))


def load_captions(
    path: PathLike,
    images_dir: PathLike | None = None,
    *,
    prompt: str = CAPTION_PROMPT,
    skip_bad: bool = False,
) -> Loaded[VQARecord]:
    """Load an image-caption set: a .jsonl (or .json list) or a .tsv with a header line.

    Columns: ``image`` (a path relative to ``images_dir``, default the file's folder, or a
    {"bytes", "path"} struct), ``caption``, and optionally ``id`` (default: the image file's stem,
    as img2dataset names CC3M downloads). Each caption becomes a record asking ``prompt`` with the
    caption as the answer and as ``caption`` (the semantic filter's text). Ids must be unique.
    """
    base = Path(images_dir) if images_dir is not None else Path(path).parent
    rows = _iter_tsv(path) if Path(path).suffix.lower() == ".tsv" else _iter_table(path)
    first_seen: dict[str, str] = {}

    def parse(row: _Row) -> list[VQARecord]:
        where = row.where
        image = _image_ref(row, "image", base)
        given = row.get("id", (str, int), optional=True)
        if given is None and not isinstance(image, str):
            raise row.error("id", "required when the image is embedded bytes")
        rid = str(given) if given is not None else Path(str(image)).stem
        row.name("id", rid)
        if rid in first_seen:
            raise row.error("id", f"duplicate id (first at {first_seen[rid]}); the first is kept")
        first_seen[rid] = where
        caption = row.text("caption")
        meta: dict[str, Any] = {"source": "captions"}
        if isinstance(image, bytes):
            meta["image_bytes"], image = image, None
        return [
            VQARecord(
                id=rid,
                question=prompt,
                answer=caption,
                image_path=image,
                answers=[caption],
                caption=caption,
                meta=meta,
            )
        ]

    return _collect(path, rows, parse, skip_bad)


# ---------------------------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------------------------

POPE_SPLITS = ("random", "popular", "adversarial")


def load_pope(
    jsonl_path: PathLike,
    images_dir: PathLike,
    *,
    split: str | None = None,
    skip_bad: bool = False,
) -> Loaded[VQARecord]:
    """Load one POPE question file (JSON lines of question_id, image, text, label).

    The split (random/popular/adversarial) is read from the file name
    (coco_pope_adversarial.json) unless given. ``answer`` is the lower-cased label;
    ``meta`` holds question_id, pope_split and source.
    """
    if split is None:
        stem = Path(jsonl_path).stem.lower()
        split = next((s for s in POPE_SPLITS if s in stem), None)
    base = Path(images_dir)

    def parse(row: _Row) -> list[VQARecord]:
        qid = row.get("question_id", (int, str))
        row.name("question_id", qid)
        text = row.get("text", str)
        label = row.get("label", str).strip().lower()
        if label not in ("yes", "no"):
            raise row.error("label", f"expected 'yes' or 'no', got {row.data['label']!r}")
        image_path = _image_ref(row, "image", base)
        meta = {"question_id": qid, "pope_split": split, "source": "pope"}
        if isinstance(image_path, bytes):
            meta["image_bytes"], image_path = image_path, None
        return [
            VQARecord(
                id=str(qid), question=text, answer=label, image_path=image_path, answers=[label], meta=meta
            )
        ]

    return _collect(jsonl_path, _iter_jsonl(jsonl_path), parse, skip_bad)


# ---------------------------------------------------------------------------------------------
# NaturalBench
# ---------------------------------------------------------------------------------------------

_NB_ANSWERS = {"yes_no": ("yes", "no"), "multiple_choice": ("a", "b")}


def load_naturalbench(path: PathLike, *, skip_bad: bool = False) -> Loaded[VQARecord]:
    """Load NaturalBench rows (.jsonl, .json or .parquet; one row per group of 2 images x 2 questions).

    Columns: Index, Image_0, Image_1, Question_0, Question_1, Image_{k}_Question_{j},
    Question_Type ("yes_no" or "multiple_choice"). Images are paths relative to the file, or
    Hugging Face {"bytes", "path"} structs. Each row gives four records in the reference order
    (q0 on i0, q0 on i1, q1 on i0, q1 on i1), id "{Index}_q{j}_i{k}", with meta group,
    question_index, image_index, question_type.
    """
    base = Path(path).parent

    def parse(row: _Row) -> list[VQARecord]:
        group = row.get("Index", (int, str))
        row.name("Index", group)
        qtype = row.get("Question_Type", str)
        if qtype not in _NB_ANSWERS:
            raise row.error("Question_Type", f"expected 'yes_no' or 'multiple_choice', got {qtype!r}")
        images = [_image_ref(row, f"Image_{k}", base) for k in range(2)]
        questions = [row.get(f"Question_{j}", str) for j in range(2)]
        out = []
        for j in range(2):
            for k in range(2):
                key = f"Image_{k}_Question_{j}"
                answer = row.get(key, str)
                if answer.strip().lower() not in _NB_ANSWERS[qtype]:
                    raise row.error(key, f"expected one of {_NB_ANSWERS[qtype]} for {qtype}, got {answer!r}")
                meta: dict[str, Any] = {
                    "group": group,
                    "question_index": j,
                    "image_index": k,
                    "question_type": qtype,
                    "source": "naturalbench",
                }
                ref = images[k]
                if isinstance(ref, bytes):
                    meta["image_bytes"] = ref
                out.append(
                    VQARecord(
                        id=f"{group}_q{j}_i{k}",
                        question=questions[j],
                        answer=answer,
                        image_path=ref if isinstance(ref, str) else None,
                        answers=[answer],
                        meta=meta,
                    )
                )
        return out

    return _collect(path, _iter_table(path), parse, skip_bad)


# ---------------------------------------------------------------------------------------------
# MMMU
# ---------------------------------------------------------------------------------------------

_MMMU_TYPES = ("multiple-choice", "open")
_MMMU_MAX_IMAGES = 7


def _literal_list(row: _Row, key: str, value: str) -> list[str]:
    """Parse a Python-literal list of strings ("['a', 'b']", as MMMU stores options) safely."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as err:
        raise row.error(key, f"not a list literal: {value!r}") from err
    if not isinstance(parsed, list):
        raise row.error(key, f"expected a list, got {value!r}")
    return [str(x) for x in parsed]


def load_mmmu(path: PathLike, *, skip_bad: bool = False) -> Loaded[VQARecord]:
    """Load MMMU rows from a local .jsonl, .json or .parquet file.

    Columns: id, question, options (a list, or its string form as in the official files),
    answer, question_type ("multiple-choice" or "open"), and images in image_1 .. image_7 (paths
    relative to the file, or {"bytes", "path"} structs) or an ``images`` list. For multiple
    choice the answer must be a letter within the options. Open answers stored as a list literal
    ("['24/7', '3.429']") become ``answers`` (``answer`` is the first). ``meta`` holds options,
    question_type, image_refs (every image: path or bytes) and any other scalar columns
    (subfield, topic_difficulty...).
    """
    base = Path(path).parent

    def parse(row: _Row) -> list[VQARecord]:
        rid = row.get("id", (str, int))
        row.name("id", rid)
        question = row.get("question", str)
        qtype = row.get("question_type", str)
        if qtype not in _MMMU_TYPES:
            raise row.error("question_type", f"expected one of {_MMMU_TYPES}, got {qtype!r}")
        options = row.get("options", (list, str), optional=qtype == "open") or []
        if isinstance(options, str):
            options = _literal_list(row, "options", options)
        options = [str(o) for o in options]
        raw_answer = row.get("answer", (str, list))
        if isinstance(raw_answer, list):
            answers = [str(a) for a in raw_answer]
        elif qtype == "open" and raw_answer.strip().startswith("["):
            answers = _literal_list(row, "answer", raw_answer)
        else:
            answers = [raw_answer]
        if not answers:
            raise row.error("answer", "empty answer list")
        if qtype == "multiple-choice":
            if not options:
                raise row.error("options", "a multiple-choice question needs options")
            letters = [chr(ord("A") + i) for i in range(len(options))]
            bad = [a for a in answers if a not in letters]
            if bad:
                raise row.error("answer", f"expected a letter in {letters}, got {raw_answer!r}")
        consumed = {"id", "question", "question_type", "options", "answer", "images"}
        refs: list[str | bytes] = []
        if "images" in row.data and row.data["images"] is not None:
            listed = row.get("images", list)
            refs.extend(_image_value(row, f"images[{i}]", value, base) for i, value in enumerate(listed))
        for n in range(1, _MMMU_MAX_IMAGES + 1):
            consumed.add(f"image_{n}")
            ref = _image_ref(row, f"image_{n}", base, optional=True)
            if ref is not None:
                refs.append(ref)
        meta: dict[str, Any] = {
            "options": options,
            "question_type": qtype,
            "image_refs": refs,
            "source": "mmmu",
        }
        for key, value in row.data.items():
            if key not in consumed and (value is None or isinstance(value, str | int | float | bool)):
                meta[key] = value
        first = refs[0] if refs else None
        if isinstance(first, bytes):
            meta["image_bytes"] = first
        return [
            VQARecord(
                id=str(rid),
                question=question,
                answer=answers[0],
                image_path=first if isinstance(first, str) else None,
                answers=answers,
                meta=meta,
            )
        ]

    return _collect(path, _iter_table(path), parse, skip_bad)


# ---------------------------------------------------------------------------------------------
# GenEval
# ---------------------------------------------------------------------------------------------


def _geneval_objects(row: _Row, key: str, *, optional: bool) -> list[dict[str, Any]]:
    objects = row.get(key, list, optional=optional) or []
    for i, obj in enumerate(objects):
        where = f"{key}[{i}]"
        if not isinstance(obj, dict):
            raise row.error(where, f"expected an object, got {obj!r}")
        if not isinstance(obj.get("class"), str):
            raise row.error(f"{where}.class", f"expected a string, got {obj.get('class')!r}")
        count = obj.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise row.error(f"{where}.count", f"expected a non-negative integer, got {count!r}")
        if "color" in obj and not isinstance(obj["color"], str):
            raise row.error(f"{where}.color", f"expected a string, got {obj['color']!r}")
        if "position" in obj:
            pos = obj["position"]
            if not (
                isinstance(pos, list)
                and len(pos) == 2
                and isinstance(pos[0], str)
                and isinstance(pos[1], int)
                and not isinstance(pos[1], bool)
            ):
                raise row.error(f"{where}.position", f"expected [relation, index], got {pos!r}")
    return objects


def load_geneval_prompts(metadata_jsonl: PathLike, *, skip_bad: bool = False) -> Loaded[GenEvalPrompt]:
    """Load GenEval's ``evaluation_metadata.jsonl`` (tag, include, optional exclude, prompt).

    ``GenEvalPrompt.index`` counts valid and skipped lines alike, so it always equals the line's
    position among the prompts and output folder names stay aligned with the file.
    """
    position = -1

    def parse(row: _Row) -> list[GenEvalPrompt]:
        tag = row.get("tag", str)
        prompt = row.get("prompt", str)
        include = _geneval_objects(row, "include", optional=False)
        exclude = _geneval_objects(row, "exclude", optional=True)
        return [
            GenEvalPrompt(
                index=position, tag=tag, prompt=prompt, include=include, exclude=exclude, metadata=row.data
            )
        ]

    def numbered() -> Iterator[tuple[str, Any]]:
        nonlocal position
        for where, raw in _iter_jsonl(metadata_jsonl):
            position += 1
            yield where, raw

    return _collect(metadata_jsonl, numbered(), parse, skip_bad)
