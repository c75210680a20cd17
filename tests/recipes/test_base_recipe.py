"""`unigame base` end to end on a micro recipe: builds, caches, loads offline, and rejects bad configs."""

import json

import pytest
import torch

from unigame.cli import main
from unigame.models.tiny_janus import TinyJanusConfig
from unigame.pretrain.base import MANIFEST, BaseConfig, BaseTraining, build_base, is_complete

MICRO = BaseConfig(
    model=TinyJanusConfig(vision_hidden=32, vision_heads=2, text_hidden=32, text_heads=2, text_layers=1),
    training=BaseTraining(vq_steps=2, vision_steps=2, janus_steps=2, clip_steps=2, batch_size=4),
    eval_items=8,
)


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    return build_base(MICRO, output=tmp_path_factory.mktemp("base") / "tiny", progress=False)


def test_base_is_complete_and_loads_offline(micro_base, monkeypatch):
    from transformers import CLIPModel, JanusForConditionalGeneration

    from unigame.models.janus import JanusAdapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_complete(micro_base)
    assert (micro_base / "model.safetensors").exists()
    model = JanusForConditionalGeneration.from_pretrained(micro_base, local_files_only=True)
    assert model.config.text_config.hidden_size == 32
    CLIPModel.from_pretrained(micro_base / "clip", local_files_only=True)
    adapter = JanusAdapter.from_pretrained(micro_base)
    answers = adapter.answer(
        torch.rand(2, 3, 32, 32), ["Is there a red circle?", "How many objects are there?"]
    )
    assert len(answers) == 2
    manifest = json.loads((micro_base / MANIFEST).read_text())
    assert {"clean_vqa", "naturalbench", "generation"} <= set(manifest["evaluation"])
    assert manifest["fingerprint"] == MICRO.fingerprint()


def test_cached_base_is_reused_not_rebuilt(micro_base):
    stamp = (micro_base / "model.safetensors").stat().st_mtime_ns
    assert build_base(MICRO, output=micro_base, progress=False) == micro_base
    assert (micro_base / "model.safetensors").stat().st_mtime_ns == stamp


def test_same_recipe_and_threads_give_the_same_bytes(micro_base, tmp_path):
    again = build_base(MICRO, output=tmp_path / "again", progress=False)
    for name in ("model.safetensors", "clip/model.safetensors"):
        assert (again / name).read_bytes() == (micro_base / name).read_bytes(), name
    first, second = (json.loads((p / MANIFEST).read_text()) for p in (micro_base, again))
    assert first["evaluation"] == second["evaluation"]


def test_fingerprint_tracks_weights_not_eval_size():
    assert (
        MICRO.fingerprint()
        == BaseConfig(model=MICRO.model, training=MICRO.training, eval_items=99).fingerprint()
    )
    assert MICRO.fingerprint() != BaseConfig(model=MICRO.model, training=MICRO.training, seed=1).fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"generation_lr": 1e-2},
        {"generation_max_objects": 2},
        {"generation_weight": 2.0},
        {"vision_steps": 10},
        {"vq_reseed_fraction": 0.5},
        {"vq_batch_size": 8},
        {"vqa_kinds": ("colour",)},
        {"match_fraction": 0.2},
        {"ask_fraction": 0.1},
    ],
)
def test_options_left_out_of_the_fingerprint_count_once_they_change_the_recipe(change):
    from dataclasses import replace

    earlier = BaseTraining(
        vq_batch_size=32, batch_size=32, vq_reseed_fraction=1.0, vision_steps=0,
        generation_lr=None, generation_max_objects=None, generation_weight=1.0,
        vqa_kinds=None, match_fraction=0.0, ask_fraction=0.0,
    )  # fmt: skip
    assert (
        BaseConfig(training=earlier).fingerprint()
        != BaseConfig(training=replace(earlier, **change)).fingerprint()
    )


@pytest.mark.parametrize(
    "override, message",
    [
        (["--cfg.shapes.max_objects", "0"], "max_objects=0"),
        (["--cfg.shapes.colours", "[red, pink]"], "pink"),
        (["--cfg.model.image_size", "48"], "image_size=48"),
        (["--cfg.training.janus_steps", "0"], "janus_steps=0"),
        (["--cfg.training.generation_max_objects", "5"], "generation_max_objects=5"),
        (["--cfg.training.generation_max_objects", "0"], "generation_max_objects=0"),
        (["--cfg.training.generation_lr", "0"], "generation_lr=0"),
        (["--cfg.training.generation_weight", "-1"], "generation_weight=-1"),
        (["--cfg.training.vqa_kinds", "[colour, size]"], "vqa_kinds"),
        (["--cfg.training.match_fraction", "1.5"], "match_fraction=1.5"),
        (["--cfg.training.match_fraction", "0.6", "--cfg.training.ask_fraction", "0.5"], "must be <= 1"),
    ],
)
def test_bad_config_stops_before_any_work(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["base", "--output", str(tmp_path / "never"), *override])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_unknown_key_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["base", "--cfg.training.janus_stepz", "5"])
    assert "janus_stepz" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["base"], ["demo"], ["export"]])
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def _recipe(name: str) -> BaseConfig:
    from pathlib import Path

    import yaml

    recipe = yaml.safe_load((Path(__file__).parents[2] / f"configs/base/{name}.yaml").read_text())
    config = BaseConfig(seed=recipe["seed"], training=BaseTraining(**recipe["training"]))
    config.validate()
    return config


def test_published_bases_keep_their_cache_paths():
    """Options added since leave the cache directories the docs name where they were."""
    earlier = _recipe("tiny_janus_v1")
    assert earlier.training.vision_steps == 0 and earlier.training.vq_reseed_fraction == 1.0
    assert earlier.fingerprint() == "046d8121478f"
    # the task-tuned default that docs/results/investigation.md and the long recipe compare against
    assert _recipe("tiny_janus_v2").fingerprint() == "aae51f218028"
    assert BaseConfig().fingerprint() == "b226452008a3"  # the generalist default of docs/base.md


def test_generalist_default_holds_the_target_kinds_back():
    training = BaseTraining()
    assert set(training.vqa_kinds) == {"colour", "shape"}
    assert training.match_fraction > 0 and training.ask_fraction > 0


def test_long_recipe_differs_from_the_task_tuned_recipe_only_in_the_joint_stage():
    from dataclasses import asdict

    long, default = asdict(_recipe("tiny_janus_long").training), asdict(_recipe("tiny_janus_v2").training)
    changed = {k for k in default if long[k] != default[k]}
    assert changed == {
        "janus_steps",
        "janus_lr",
        "generation_lr",
        "generation_max_objects",
        "generation_weight",
    }
