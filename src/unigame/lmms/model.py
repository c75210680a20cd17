"""The `unigame_janus` model class lmms-eval loads (registered by the `lmms_eval.models` entry point).

    lmms-eval --model unigame_janus \\
        --model_args pretrained=BASE,lora=RUN/checkpoints/step-N/lora,prompt=auto,dtype=float32 \\
        --tasks vqav2_val --batch_size 16

Importing this module imports lmms-eval (`pip install "unigame[lmms]"`).
"""

from __future__ import annotations

import os
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from unigame.lmms.answering import answer_requests, load_janus

__all__ = ["UnigameJanus"]


class UnigameJanus(lmms):
    """A unigame Janus checkpoint (base plus optional LoRA) answering lmms-eval's generation tasks.

    Args (lmms-eval's `--model_args`, plus its `--device` and `--batch_size`):
        pretrained: the base model directory (JanusForConditionalGeneration + tokenizer), or a
            directory written by `unigame export --merge`.
        lora: a peft LoRA folder, e.g. RUN/checkpoints/step-N/lora (checked against the base).
        prompt: auto (the layout the checkpoint was trained with), tiny or janus_pro.
        dtype: float32, bfloat16 or float16 weights.
        device: torch device; default cuda when available, else cpu.
        batch_size: questions per model call.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        lora: str | None = None,
        prompt: str = "auto",
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            allowed = "pretrained, lora, prompt, dtype"
            raise ValueError(
                f"unigame_janus got unknown model_args {', '.join(sorted(unknown))}; allowed: {allowed}"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "unigame_janus runs in one process: launch lmms-eval without accelerate/torchrun"
            )
        if str(batch_size) == "auto" or not str(batch_size).isdecimal():
            raise ValueError(f"unigame_janus needs a number for --batch_size, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.adapter, self.prompt = load_janus(pretrained, lora, prompt, device, dtype)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = answer_requests(self.adapter, requests, self.task_dict, self.batch_size)
        for request, answer in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("generate_until", request.args, answer)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "unigame_janus answers generation tasks (output_type: generate_until) only; "
            "this task scores log-likelihoods"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("unigame_janus answers single-round generation tasks only")
