"""`unigame export RUN --merge --output DIR`: the merged model answers and scores as base + LoRA does,
and loads with plain `transformers` in a process that never imports unigame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from unigame.cli import main
from unigame.export import export

QUESTIONS = ["Is there a red circle?", "How many objects are there?", "What colour is the square?"]
ANSWERS = ["yes", "3", "blue"]

# Runs in a fresh interpreter: loads the export with transformers only and scores fixed inputs.
_PLAIN_LOAD = """
import sys
import torch
from safetensors.torch import load_file, save_file
from transformers import JanusForConditionalGeneration

model, info = JanusForConditionalGeneration.from_pretrained(sys.argv[1], output_loading_info=True)
assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
assert not any("lora" in name for name in model.state_dict()), "LoRA layers left in the export"
inputs = load_file(sys.argv[2])
with torch.no_grad():
    logits = model.eval()(**inputs).logits
assert not [m for m in sys.modules if m == "unigame" or m.startswith("unigame.")], "unigame was imported"
save_file({"logits": logits.contiguous()}, sys.argv[3])
"""


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A run directory as training leaves it: config.yaml naming the base, and a checkpoint whose
    lora/ is a random (non-zero) peft LoRA over the language model."""
    from peft import LoraConfig, get_peft_model

    from unigame.models.janus import JanusAdapter

    run = tmp_path_factory.mktemp("export") / "run"
    checkpoint = run / "checkpoints" / "step-00000002"
    adapter = JanusAdapter.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=adapter.lora_target_modules(), init_lora_weights=False
    )
    get_peft_model(adapter.model, config).save_pretrained(checkpoint / "lora")
    (checkpoint / "state.json").write_text("{}")  # what marks a checkpoint complete
    (run / "config.yaml").write_text(f"model:\n  path: {tiny_model_dir}\n  prompt: tiny\n")
    return run


def _pixels() -> torch.Tensor:
    return torch.rand(len(QUESTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow  # ~25 s on a busy 2-core machine: a second interpreter loads transformers
def test_merged_model_answers_and_scores_as_base_plus_lora(tiny_model_dir, run_dir, tmp_path):
    from unigame.eval.run import load_model

    out = Path(export(str(run_dir), output=str(tmp_path / "merged"), merge=True))
    assert {"model.safetensors", "config.json", "tokenizer.json", "clip", "unigame_export.json"} <= {
        p.name for p in out.iterdir()
    }
    provenance = json.loads((out / "unigame_export.json").read_text())
    assert (
        provenance["base"] == str(tiny_model_dir)
        and provenance["step"] == 2
        and provenance["prompt"] == "tiny"
    )

    lora = run_dir / "checkpoints" / "step-00000002" / "lora"
    with_lora, _ = load_model(str(tiny_model_dir), lora=str(lora), device="cpu")
    merged, _ = load_model(str(out), device="cpu")
    base, _ = load_model(str(tiny_model_dir), device="cpu")
    pixels = _pixels()
    with torch.no_grad():
        loss_lora = with_lora.understanding_loss(pixels, QUESTIONS, ANSWERS)
        loss_merged = merged.understanding_loss(pixels, QUESTIONS, ANSWERS)
        loss_base = base.understanding_loss(pixels, QUESTIONS, ANSWERS)
    torch.testing.assert_close(loss_merged, loss_lora, rtol=1e-5, atol=1e-5)
    assert (loss_base - loss_lora).abs().max() > 1e-3  # the LoRA does change the model
    assert merged.answer(pixels, QUESTIONS, max_new_tokens=8) == with_lora.answer(
        pixels, QUESTIONS, max_new_tokens=8
    )

    # The same forward pass in a process that loads the export with transformers alone.
    ids, mask, _, _ = with_lora._pack([with_lora._understanding_prompt_ids(q) for q in QUESTIONS])
    inputs = tmp_path / "inputs.safetensors"
    plain = {"input_ids": ids, "attention_mask": mask, "pixel_values": with_lora.normalize_pixels(pixels)}
    save_file(plain, str(inputs))
    result = subprocess.run(
        [sys.executable, "-c", _PLAIN_LOAD, str(out), str(inputs), str(tmp_path / "logits.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = with_lora.model(**plain).logits
    torch.testing.assert_close(
        load_file(str(tmp_path / "logits.safetensors"))["logits"], expected, rtol=1e-4, atol=1e-4
    )


def test_export_refuses_a_non_empty_output_unless_forced(run_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run_dir), "--merge", "--output", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"--output {str(out)!r} is not empty; pass --force" in error
    assert (out / "notes.txt").read_text() == "keep me"

    main(["export", str(run_dir), "--merge", "--output", str(out), "--force"])
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".*export-tmp"))  # the staging folder is gone


def test_export_needs_merge_and_never_writes_over_its_inputs(tiny_model_dir, run_dir, tmp_path):
    with pytest.raises(ValueError, match="pass --merge"):
        export(str(run_dir), output=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="holds the export's own input"):
        export(str(run_dir), output=str(tiny_model_dir), merge=True, force=True)
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        export(str(tmp_path), output=str(tmp_path / "out"), merge=True)
    assert (tiny_model_dir / "model.safetensors").is_file()
