"""A LoRA folder is checked against the base before it is loaded: a mismatch names both folders."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from unigame.models.lora import LoraMismatchError, check_lora_fits

from ..conftest import SMALL


def _save_lora(model_dir: Path, out: Path) -> Path:
    """A random (non-zero) LoRA over the language model of the Janus saved at `model_dir`."""
    from peft import LoraConfig, get_peft_model

    from unigame.models.janus import JanusAdapter

    adapter = JanusAdapter.from_pretrained(model_dir)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=adapter.lora_target_modules(), init_lora_weights=False
    )
    get_peft_model(adapter.model, config).save_pretrained(out)
    return out


def _other_base(tmp_path: Path, tiny_model_dir: Path, **changes) -> Path:
    from transformers import AutoTokenizer

    from unigame.models.tiny_janus import build_tiny_janus

    path = tmp_path / "other-base"
    build_tiny_janus(dataclasses.replace(SMALL, **changes), seed=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def _base(path: Path):
    from transformers import JanusForConditionalGeneration

    return JanusForConditionalGeneration.from_pretrained(path)


def test_a_lora_trained_on_the_base_fits_and_loads(tiny_model_dir, tmp_path):
    from unigame.eval.run import load_model

    lora = _save_lora(tiny_model_dir, tmp_path / "lora")
    check_lora_fits(_base(tiny_model_dir), tiny_model_dir, lora)
    adapter, _ = load_model(str(tiny_model_dir), lora=str(lora), device="cpu")
    assert (
        sum(name.endswith("lora_A") for name, _ in adapter.model.named_modules()) == 7
    )  # 1 layer, 7 projections


def test_a_lora_of_other_shapes_is_refused_naming_both_folders(tiny_model_dir, tmp_path):
    wider = _other_base(tmp_path, tiny_model_dir, text_hidden=48)
    lora = _save_lora(wider, tmp_path / "wide-lora")
    with pytest.raises(LoraMismatchError) as err:
        check_lora_fits(_base(tiny_model_dir), tiny_model_dir, lora)
    message = str(err.value)
    assert str(lora) in message and str(tiny_model_dir) in message
    assert re.search(r"\.up_proj: LoRA A has in_features 48, base 32", message)
    assert f"trained on {str(wider)!r}" in message


def test_a_lora_for_other_layers_is_refused_both_ways(tiny_model_dir, tmp_path):
    deeper = _other_base(tmp_path, tiny_model_dir, text_layers=2)
    from_deeper = _save_lora(deeper, tmp_path / "deep-lora")
    with pytest.raises(
        LoraMismatchError,
        match=r"layers\.1\.mlp\.down_proj \(no such module in the base\); \S+layers\.1\.mlp\.gate_proj ",
    ):
        check_lora_fits(_base(tiny_model_dir), tiny_model_dir, from_deeper)
    from_shallow = _save_lora(tiny_model_dir, tmp_path / "shallow-lora")
    with pytest.raises(
        LoraMismatchError, match=r"layers\.1\.mlp\.\w+_proj \(selected by target_modules, no LoRA weights\)"
    ):
        check_lora_fits(_base(deeper), deeper, from_shallow)


def test_evaluation_stops_before_any_work_on_a_mismatched_lora(tiny_model_dir, tmp_path):
    from unigame.eval.run import evaluate

    lora = _save_lora(_other_base(tmp_path, tiny_model_dir, text_hidden=48), tmp_path / "wide-lora")
    with pytest.raises(LoraMismatchError, match="does not fit the base model"):
        evaluate(
            "shapes", model=str(tiny_model_dir), lora=str(lora), output=str(tmp_path / "eval"), quick=True
        )
    assert not (tmp_path / "eval").exists()


def test_missing_or_pickled_adapter_files_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        check_lora_fits(_base(tiny_model_dir), tiny_model_dir, tmp_path)
    lora = _save_lora(tiny_model_dir, tmp_path / "lora")
    (lora / "adapter_model.safetensors").rename(lora / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled adapter weights are not loaded"):
        check_lora_fits(_base(tiny_model_dir), tiny_model_dir, lora)
