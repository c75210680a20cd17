"""What the `unigame_janus` lmms-eval model does, without importing lmms-eval.

lmms-eval hands a model a list of requests whose `args` are
`(context, generation_kwargs, doc_to_visual, doc_id, task, split)` and a `task_dict` of
`{task: {split: docs}}`; the model returns one string per request. Here those requests are
answered through `JanusAdapter.answer` (greedy, the checkpoint's own prompt layout), with the
image preprocessing `unigame eval` uses for benchmarks (pad to a grey square, resize to the
adapter's `image_size`), so the two harnesses ask the model exactly the same thing.
`unigame.lmms.model` wraps this in lmms-eval's model class; tests drive it with stand-in requests.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unigame.data.pixels import images_to_pixels, square_resize

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DTYPES", "answer_requests", "load_janus", "to_rgb"]

DEFAULT_MAX_NEW_TOKENS = 128  # when a task does not say; the answer stops at EOS before that
DTYPES = ("float32", "bfloat16", "float16")
PROMPTS = ("auto", "tiny", "janus_pro")


def load_janus(
    pretrained: str,
    lora: str | None = None,
    prompt: str = "auto",
    device: str | None = None,
    dtype: str = "float32",
) -> tuple[Any, str]:
    """(JanusAdapter in eval mode, prompt layout used) for a base directory plus an optional LoRA.

    The LoRA is checked against the base before anything is evaluated (an error naming both
    folders); `prompt=auto` takes the layout the checkpoint was trained with
    (`unigame.eval.run.checkpoint_prompt`).
    """
    from unigame.eval.run import checkpoint_prompt, load_model

    if prompt not in PROMPTS:
        raise ValueError(f"prompt={prompt!r} is not a prompt layout; allowed: {', '.join(PROMPTS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; allowed: {', '.join(DTYPES)}")
    path = Path(str(pretrained)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained={str(pretrained)!r} is not a model directory")
    if prompt == "auto":
        prompt = checkpoint_prompt(path, lora)
    adapter, _ = load_model(str(path), None if lora is None else str(lora), device or "auto", prompt)  # type: ignore[arg-type]
    if dtype != "float32":
        adapter.model.to(getattr(torch, dtype))
    adapter.model.eval()
    return adapter, prompt


def to_rgb(image: Any) -> np.ndarray:
    """A PIL image (what lmms-eval's `doc_to_visual` returns) as (H, W, 3) uint8, converted as
    unigame's own loader converts files (alpha on white, CMYK, 16-bit, palette)."""
    from PIL import Image

    from unigame.data.loaders import load_image
    from unigame.data.records import VQARecord

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image from doc_to_visual, got {type(image).__name__}")
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")  # keeps every mode, so the loader sees what a file would hold
    return load_image(
        VQARecord(id="lmms-eval visual", question="", answer="", meta={"image_bytes": buffer.getvalue()})
    )


def _generation_settings(gen_kwargs: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
    until = gen_kwargs.get("until") or ()
    if isinstance(until, str):
        until = (until,)
    max_new_tokens = int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    return max_new_tokens, tuple(u for u in until if u)


def _cut(text: str, until: Sequence[str]) -> str:
    """The answer up to the first stop string (lmms-eval's `until`)."""
    for stop in until:
        if stop in text:
            text = text.split(stop, 1)[0]
    return text


def _question(context: Any) -> str:
    """The task's prompt as the question; a llava-style "<image>" marker is dropped (the adapter
    places the image itself by its prompt layout)."""
    text = str(context)
    return text.replace("<image>", "").strip() if "<image>" in text else text


def _pixels(
    args: tuple, task_dict: Mapping[str, Mapping[str, Any]], size: int, warned: set[str]
) -> np.ndarray:
    _context, _gen, doc_to_visual, doc_id, task, split = args
    visuals = doc_to_visual(task_dict[task][split][doc_id])
    visuals = [v for v in (visuals or []) if v is not None]
    if not visuals:
        raise ValueError(
            f"task {task!r}, doc {doc_id}: no image; unigame_janus answers questions about one image"
        )
    if len(visuals) > 1 and task not in warned:
        warned.add(task)
        warnings.warn(
            f"task {task!r}: documents with {len(visuals)} images are answered from the first image only "
            "(the unified-model protocol takes one image per question)",
            stacklevel=3,
        )
    return square_resize(to_rgb(visuals[0]), size)


def answer_requests(
    adapter: Any,
    requests: Sequence[Any],
    task_dict: Mapping[str, Mapping[str, Any]],
    batch_size: int = 16,
) -> list[str]:
    """One greedy answer per lmms-eval `generate_until` request, in request order.

    Requests are batched in their given order within groups of equal generation settings
    (`max_new_tokens`, `until`), so with the same batch size a benchmark's documents are batched as
    `unigame eval` batches them. Sampling settings (`temperature`, `do_sample`) are ignored: answers
    are greedy, as in every unigame evaluation.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    sampled = False
    for i, request in enumerate(requests):
        gen_kwargs = request.args[1] or {}
        sampled |= bool(gen_kwargs.get("do_sample")) or float(gen_kwargs.get("temperature") or 0) > 0
        groups.setdefault(_generation_settings(gen_kwargs), []).append(i)
    if sampled:
        warnings.warn("a task asked for sampling; unigame_janus decodes greedily", stacklevel=2)
    size = int(getattr(adapter, "image_size", 384))
    param = next(adapter.model.parameters())
    answers: list[str] = [""] * len(requests)
    warned: set[str] = set()
    for (max_new_tokens, until), indices in groups.items():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            images = [_pixels(requests[i].args, task_dict, size, warned) for i in batch]
            pixels = images_to_pixels(images).to(param.device, param.dtype)  # (B, 3, S, S) in [0, 1]
            questions = [_question(requests[i].args[0]) for i in batch]
            with torch.no_grad():
                texts = adapter.answer(pixels, questions, max_new_tokens=max_new_tokens)
            for i, text in zip(batch, texts, strict=True):
                answers[i] = _cut(text, until)
    return answers
