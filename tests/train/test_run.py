"""The `train` entry point end to end on a tiny random Janus saved to disk, its CLI errors, and every
shipped YAML recipe (searched recursively) with the commands its header documents."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from unigame.data.shapes import ShapesConfig
from unigame.train.config import (
    ConfigError,
    DataConfig,
    GameConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from unigame.train.run import load_recipe, train
from unigame.train.run_logging import read_metrics

from .conftest import SMALL

REPO = Path(__file__).resolve().parents[2]
# Training recipes; configs/accelerate/ holds accelerate's launcher configs (test_distributed.py checks them).
RECIPES = sorted(
    p
    for p in (REPO / "configs").rglob("*.yaml")
    if p.relative_to(REPO / "configs").parts[0] not in ("accelerate", "base")  # not training recipes
)


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory, text_tokenizer):
    """A tiny random Janus + tokenizer + tiny CLIP (2 training steps), saved like a real model directory."""
    from unigame.models.tiny_janus import build_tiny_janus
    from unigame.pretrain.clip import clip_tokenizer, save_tiny_clip, tiny_clip_config, train_tiny_clip

    path = tmp_path_factory.mktemp("models") / "tiny-janus"
    build_tiny_janus(SMALL, seed=0).save_pretrained(path)
    text_tokenizer.save_pretrained(path)
    clip_config = tiny_clip_config(
        len(clip_tokenizer(text_tokenizer)), 32, hidden_size=32, num_layers=1, projection_dim=16
    )
    clip = train_tiny_clip(
        text_tokenizer, ShapesConfig(), steps=2, batch_size=8, progress=False, clip_config=clip_config
    )
    save_tiny_clip(clip, text_tokenizer, path / "clip", 32)
    return path


def _cfg(path: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(path=str(path)),
        data=DataConfig(train_items=16, batch_size=4),
        # the real tiny CLIP is loaded and asked; a bar of -1 lets the random model's candidates through
        game=GameConfig(filter="clip", clip_calibration="absolute", clip_threshold=-1.0),
        optim=OptimConfig(steps=steps),
        logging=LoggingConfig(log_every=1, checkpoint_every=2, panel_items=2, progress=False),
    )


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft 0.21 + transformers 5
def test_train_end_to_end_then_resume_auto(janus_dir, tmp_path):
    from peft import PeftModel
    from transformers import JanusForConditionalGeneration

    run = tmp_path / "run"
    train(_cfg(janus_dir, steps=3), output=str(run))
    metrics = read_metrics(run / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3]
    assert (metrics["filter_pass_rate"] == 1.0).all() and metrics["buffer_size"][-1] > 0
    assert not torch.isnan(torch.tensor(metrics["attack_success_rate"])).any()  # measured every step here
    assert list((run / "tb").glob("events.out.tfevents.*"))
    for png in ("eps.png", "tug_of_war.png", "hard_samples.png"):
        assert (run / "plots" / png).read_bytes()[:4] == b"\x89PNG", png
    assert (run / "config.yaml").is_file()
    final = run / "checkpoints" / "step-00000003"
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"step-00000002", "step-00000003"}
    # the LoRA is a plain peft adapter
    base = JanusForConditionalGeneration.from_pretrained(janus_dir, local_files_only=True)
    model = PeftModel.from_pretrained(base, final / "lora")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)

    with pytest.warns(UserWarning, match=r"optim\.steps: 3 -> 5.*|this run's config wins"):
        train(_cfg(janus_dir, steps=5), resume="auto", output=str(run))
    assert read_metrics(run / "metrics.csv")["step"].tolist() == [1, 2, 3, 4, 5]
    assert (run / "checkpoints" / "step-00000005").is_dir()


def _cli(args: list[str]) -> None:
    from jsonargparse import auto_cli

    auto_cli([train], args=args, as_positional=False)


def test_unknown_key_fails_before_the_model_loads(capsys, tmp_path):
    missing_model = str(tmp_path / "no-model-here")
    with pytest.raises(SystemExit):
        _cli(["--cfg.model.path", missing_model, "--cfg.game.epz_max", "0.1"])
    assert "epz_max" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(["--cfg.model.path", missing_model, "--cfg.game.adversary", "pixels"])
    assert "cfg.game.adversary" in capsys.readouterr().err


def test_out_of_range_values_fail_before_the_model_loads(tmp_path):
    missing_model = str(tmp_path / "no-model-here")
    with pytest.raises(ConfigError) as info:
        _cli(["--cfg.model.path", missing_model, "--cfg.game.eps_max", "-1", "--cfg.game.percentile", "120"])
    assert "game.eps_max=-1.0" in str(info.value) and "game.percentile=120.0" in str(info.value)
    assert "no-model-here" not in str(info.value)


def test_model_dir_without_the_expected_modules_is_named(tmp_path):
    not_janus = tmp_path / "llama"
    not_janus.mkdir()
    (not_janus / "config.json").write_text('{"model_type": "llama", "text_config": {"hidden_size": 8}}')
    (not_janus / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError) as info:
        train(_cfg(not_janus, steps=1), output=str(tmp_path / "run"))
    message = str(info.value)
    assert "model.vision_model (vision_config" in message and "model.vqmodel (vq_config" in message
    assert "JanusAdapter" in message and "model.language_model" not in message
    with pytest.raises(FileNotFoundError, match="no config.json.*JanusAdapter"):
        train(_cfg(tmp_path, steps=1), output=str(tmp_path / "run2"))


def test_every_recipe_validates():
    assert len(RECIPES) >= 4, RECIPES
    for recipe in RECIPES:
        cfg = load_recipe(recipe)
        assert cfg.errors() == [], recipe
        assert cfg.game.reg_lambda == 0.0, recipe  # λ‖δ‖² would only pull ε down (GameConfig help)
    assert load_recipe(REPO / "configs" / "shapes_tiny_sft.yaml").game.enabled is False
    pro = load_recipe(REPO / "configs" / "janus_pro_1b.yaml")
    assert (pro.optim.und_lr, pro.optim.gen_lr, pro.model.precision, pro.game.clip_calibration) == (
        2e-5,
        5e-3,
        "bf16",
        "absolute",
    )


def _header_commands(recipe: Path) -> dict[str, list[str]]:
    """'label: unigame train ARGS' lines of a recipe header -> {label: ARGS}."""
    commands = {}
    for line in recipe.read_text().splitlines():
        match = re.match(r"#\s+(?:([^:]+?):\s+)?unigame train (.*)$", line)
        if match:
            commands[match.group(1) or f"line-{len(commands)}"] = shlex.split(match.group(2))
    return commands


def test_recipe_header_commands_parse_and_reach_every_table4_row(monkeypatch):
    from jsonargparse import ArgumentParser

    monkeypatch.chdir(REPO)  # the commands use paths relative to the repository
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(train)
    configs = {}
    for recipe in RECIPES:
        for label, args in _header_commands(recipe).items():
            cfg = parser.instantiate(parser.parse_args(args)).cfg
            assert cfg.errors() == [], (recipe.name, label)
            configs[(recipe.name, label)] = cfg
    rows = {  # paper Table 4 -> (adversary, filter, buffer)
        "noise": ("noise", "none", False),
        "embedding": ("embedding", "none", False),
        "embedding+cosine": ("embedding", "cosine", False),
        "embedding+cosine+buffer": ("embedding", "cosine", True),
        "decoding only": ("decoder", "none", False),
        "decoding+cosine": ("decoder", "cosine", False),
        "decoding+CLIP": ("decoder", "clip", False),
        "full (this recipe)": ("decoder", "clip", True),
    }
    for label, expected in rows.items():
        game = configs[("shapes_tiny_unigame.yaml", label)].game
        assert (game.adversary, game.filter, game.buffer) == expected, label
    assert configs[("shapes_tiny_unigame.yaml", "official mining")].game.mining == "official"
    eps_zero = configs[("shapes_tiny_unigame.yaml", "UniGame with eps = 0")]  # the two controls
    assert eps_zero.game.enabled and eps_zero.game.eps_max == 0
    equal = configs[("shapes_tiny_unigame.yaml", "SFT, equal examples")]
    assert not equal.game.enabled and equal.data.extra_clean_items == equal.data.batch_size


def test_recipe_with_an_unknown_key_is_rejected(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("game:\n  epz_max: 0.1\n")
    with pytest.raises(Exception, match="epz_max"):
        load_recipe(recipe)
    recipe.write_text("game:\n  eps_max: -0.1\n")
    with pytest.raises(ConfigError, match=r"game\.eps_max=-0\.1"):
        load_recipe(recipe)


def test_help_renders_with_every_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--cfg.model.path",
        "--cfg.game.adversary {decoder,embedding,noise}",
        "--cfg.optim.und_lr",
        "--resume",
    ):
        assert option in out, option
