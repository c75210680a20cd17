"""One UniGame step of the Janus-Pro-1B recipe through the real trainer, on a random-init model of
Janus-Pro-1B dimensions (built by benchmarks/step_cost.py) on CPU.

Widths, vocabulary, image size, token counts and the VQ are Janus-Pro-1B's; the depth of the language
model and of the vision tower is cut from 24 to 1 layer each, so that it fits a CPU test (2 GB of fp32
embeddings and heads remain; one step takes tens of seconds on one core).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from unigame.data.splits import build_split
from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.run import load_recipe

REPO = Path(__file__).resolve().parents[2]


def _step_cost():
    """benchmarks/step_cost.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("step_cost", REPO / "benchmarks" / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_cost", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft 0.21 + transformers 5
def test_one_unigame_step_at_janus_pro_1b_dimensions(tmp_path):
    step_cost = _step_cost()
    tokenizer = step_cost._tokenizer()
    adapter, what, image_size = step_cost.build_model("janus-1b", 1, tokenizer)
    text = adapter.model.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.vocab_size, image_size) == (
        2048,
        5632,
        102400,
        384,
    )

    cfg = load_recipe(REPO / "configs" / "janus_pro_1b.yaml")  # the paper's hyperparameters, bf16, LoRA
    cfg.model.device = "cpu"
    # The recipe names local VQAv2/CC3M files; here 4 ShapesWorld records stand in.
    cfg.data.source = "shapes"
    cfg.data.questions = cfg.data.annotations = cfg.data.images = cfg.data.captions = None
    cfg.data.train_items, cfg.data.batch_size = 4, 1
    cfg.optim.steps = 1
    cfg.game.filter = "none"  # a random model's decoded images mean nothing to a semantic filter
    cfg.logging.tensorboard = cfg.logging.plots = cfg.logging.progress = False
    torch.manual_seed(0)
    trainer = UniGameTrainer(cfg, tmp_path / "run", adapter, None, build_split("train", 4, 0))
    trainer.setup()
    assert trainer.bf16 and (trainer.cfg.optim.gen_lr, trainer.cfg.optim.und_lr) == (5e-3, 2e-5)
    frozen = adapter.model.model.language_model.layers[0].mlp.gate_proj.base_layer.weight
    frozen_before = frozen.detach().clone()
    before = trainer.trainable_state()

    trainer.train()  # challenge step (through the 384 px VQ decoder), mining, understand step
    trainer.cleanup()

    after = trainer.trainable_state()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after if "lora_B" in k)  # U moved
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("perturber."))  # C moved
    assert torch.equal(frozen, frozen_before) and frozen.dtype == torch.bfloat16  # frozen, stored in bf16
    assert trainer.nonfinite_steps == 0 and len(trainer.buffer) == 1  # H >= τ for the single item
    assert trainer.buffer.state_dict()["latents"].shape == (1, 576, 8)  # z̃: 24 x 24 VQ tokens of 8 dims
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    row = dict(zip(metrics[0].split(","), metrics[1].split(",")))
    assert math.isfinite(float(row["ce_adv"])) and math.isfinite(float(row["loss_understand"]))
    print(f"\n{what}: one UniGame step {float(row['step_seconds']):.1f} s on CPU")
