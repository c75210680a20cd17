"""lmms-eval integration: the `unigame_janus` model and a local VQAv2 task writer.

Installing unigame with the `lmms` extra registers the model with lmms-eval through its
`lmms_eval.models` entry point (`manifest` below), so

    lmms-eval --model unigame_janus --model_args pretrained=BASE,lora=RUN/checkpoints/step-N/lora --tasks ...

runs a unigame run in the harness. This module stays light: lmms-eval is imported only by
`unigame.lmms.model`, when lmms-eval itself loads the model class.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODEL_CLASS", "MODEL_ID", "manifest"]

MODEL_ID = "unigame_janus"
MODEL_CLASS = "unigame.lmms.model.UnigameJanus"


def manifest() -> Any:
    """The `lmms_eval.models` entry point: lmms-eval's `ModelManifest` for `unigame_janus`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=MODEL_CLASS)
