"""TrainConfig: paper defaults, every error reported at once naming key/value/range, help for every field."""

from __future__ import annotations

import dataclasses

import pytest

from unigame.train.config import (
    ConfigError,
    DataConfig,
    GameConfig,
    InternalConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_diff,
)


def test_defaults_are_valid_and_the_papers():
    cfg = TrainConfig().validate()
    game, model = cfg.game, cfg.model
    # arXiv 2511.19413: eps_max 0.02, eps 0.01, beta 0.5, tau = 60th percentile, buffer 50,
    # gen_lr 5e-3, LoRA r16 / alpha 32 / dropout 0.05, 1:1 alternation, CLIP threshold 0.6.
    assert (game.eps_max, game.eps_init, game.beta, game.percentile, game.capacity) == (
        0.02,
        0.01,
        0.5,
        60.0,
        50,
    )
    assert cfg.optim.gen_lr == 5e-3
    assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (16, 32.0, 0.05)
    assert (game.challenge_steps, game.understand_steps, game.clip_threshold) == (1, 1, 0.6)
    assert (game.enabled, game.adversary, game.filter, game.mining, game.buffer) == (
        True,
        "decoder",
        "clip",
        "decoder",
        True,
    )
    # the tiny CLIP's calibration (see the field's help)
    assert (game.clip_calibration, game.clip_margin) == ("relative_to_clean", 0.1)
    # the paper gives no λ, and λ‖δ‖² with ‖δ_t‖ = ε only pulls the gate down: off by default
    assert (game.reg_lambda, game.reg_form) == (0.0, "sum")


def test_all_errors_are_reported_together_with_key_value_and_range():
    cfg = TrainConfig(
        model=ModelConfig(lora_r=0, device="tpu"),
        data=DataConfig(batch_size=0),
        game=GameConfig(
            eps_max=-1.0,
            beta=-0.5,
            percentile=101.0,
            capacity=0,
            mine_every=0,
            adversary="pixels",
            filter="ssim",
        ),
        optim=OptimConfig(gen_lr=0.0),
        logging=LoggingConfig(keep_checkpoints=0),
    )
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    message = str(info.value)
    for expected in (
        "model.lora_r=0",
        "model.device='tpu'",
        "data.batch_size=0",
        "game.eps_max=-1.0",
        "game.beta=-0.5",
        "game.percentile=101.0",
        "game.capacity=0",
        "game.mine_every=0",
        "game.adversary='pixels' is invalid: allowed decoder | embedding | noise",
        "game.filter='ssim' is invalid: allowed clip | cosine | none",
        "optim.gen_lr=0.0",
        "logging.keep_checkpoints=0",
    ):
        assert expected in message, expected
    assert len(info.value.errors) == 12
    assert "allowed a number in [0, 100]" in message


@pytest.mark.parametrize(
    "game, message",
    [
        (
            {"eps_init": 0.02},
            "game.eps_init=0.02 is invalid: allowed a number strictly inside (0, game.eps_max=0.02)",
        ),
        ({"eps_init": 0.0}, "game.eps_init=0.0"),
        ({"mining": "official"}, "game.mining='official' with game.adversary='decoder' is invalid"),
        ({"adversary": "embedding"}, "token-space candidates have no image"),
        ({"clip_margin": 1.5}, "game.clip_margin=1.5"),
        ({"mining": "ar"}, "game.mining='ar' is invalid: allowed decoder | official"),
        ({"enabled": "on"}, "game.enabled='on' is invalid: allowed true | false"),
        ({"reg_form": "l2"}, "game.reg_form='l2' is invalid: allowed sum | mean"),
        ({"reg_lambda": -0.1}, "game.reg_lambda=-0.1 is invalid: allowed a number >= 0"),
    ],
)
def test_game_errors_name_the_key(game, message):
    with pytest.raises(ConfigError, match=None) as info:
        TrainConfig(game=GameConfig(**game)).validate()
    assert message in str(info.value)


def test_ablation_rows_are_valid_switches():
    rows = {
        "noise": {"adversary": "noise", "filter": "none", "buffer": False},
        "embedding": {"adversary": "embedding", "filter": "none", "buffer": False},
        "embedding+cosine": {"adversary": "embedding", "filter": "cosine", "buffer": False},
        "embedding+cosine+buffer": {"adversary": "embedding", "filter": "cosine"},
        "decoding only": {"filter": "none", "buffer": False},
        "decoding+cosine": {"filter": "cosine", "buffer": False},
        "decoding+CLIP": {"buffer": False},
        "full": {},
        "official mining": {"adversary": "embedding", "mining": "official"},
    }
    for name, overrides in rows.items():
        assert TrainConfig(game=GameConfig(**overrides)).errors() == [], name


def test_every_field_has_help_text():
    """jsonargparse renders the "Args:" docstrings; a field without one would show no help."""
    import docstring_parser

    for cls in (ModelConfig, DataConfig, GameConfig, InternalConfig, OptimConfig, LoggingConfig, TrainConfig):
        documented = {p.arg_name for p in docstring_parser.parse(cls.__doc__).params}
        missing = {f.name for f in dataclasses.fields(cls)} - documented
        assert not missing, f"{cls.__name__} fields without help: {missing}"


def test_config_diff_names_dotted_keys():
    a = TrainConfig().to_dict()
    b = TrainConfig(game=GameConfig(beta=0.3), optim=OptimConfig(steps=7)).to_dict()
    assert config_diff(a, b) == ["game.beta: 0.5 -> 0.3", "optim.steps: 300 -> 7"]
    assert config_diff(a, a) == []


def test_local_data_keys_are_checked_together():
    missing = TrainConfig(data=DataConfig(source="vqav2", max_items=0, max_bad_fraction=1.0))
    errors = "\n".join(missing.errors())
    for expected in (
        "data.questions is required with data.source='vqav2'",
        "data.annotations is required",
        "data.images is required",
        "data.image_size is required with data.source='vqav2'",
        "data.max_items=0 is invalid: allowed an int >= 1",
        "data.max_bad_fraction=1.0 is invalid: allowed a number in [0, 1)",
    ):
        assert expected in errors
    stray = TrainConfig(data=DataConfig(questions="q.json")).errors()
    assert stray == [
        "data.questions='q.json' is set but data.source='shapes' ignores it; set data.source vqav2"
    ]
    assert "data.source='coco' is invalid" in "\n".join(TrainConfig(data=DataConfig(source="coco")).errors())
    assert "optim.max_nonfinite_steps=0" in "\n".join(
        TrainConfig(optim=OptimConfig(max_nonfinite_steps=0)).errors()
    )
    assert TrainConfig().model.trust_remote_code is False


def test_path_errors_name_each_key_and_what_is_wrong(tmp_path):
    (tmp_path / "q.json").write_text("{}")
    cfg = TrainConfig(
        model=ModelConfig(path=str(tmp_path / "no-model"), scorer_path=str(tmp_path / "q.json")),
        data=DataConfig(
            source="vqav2",
            image_size=32,
            questions=str(tmp_path / "q.json"),
            annotations=str(tmp_path),
            images=str(tmp_path / "no-images"),
        ),
    ).validate()
    assert cfg.path_errors() == [
        f"model.path={str(tmp_path / 'no-model')!r}: it does not exist; expected a directory",
        f"model.scorer_path={str(tmp_path / 'q.json')!r}: it is not a directory; expected a directory",
        f"data.annotations={str(tmp_path)!r}: it is not a file; expected a file",
        f"data.images={str(tmp_path / 'no-images')!r}: it does not exist; expected a directory",
    ]
    assert [e.split("=")[0] for e in cfg.path_errors(model=False)] == ["data.annotations", "data.images"]


def test_eps_max_zero_is_the_eps_zero_control_and_ignores_eps_init():
    TrainConfig(game=GameConfig(eps_max=0.0, eps_init=0.5)).validate()
    with pytest.raises(ConfigError, match=r"game.eps_max=-0.01 is invalid: allowed a number >= 0"):
        TrainConfig(game=GameConfig(eps_max=-0.01)).validate()


def test_extra_clean_items_is_an_sft_control_only():
    TrainConfig(data=DataConfig(extra_clean_items=16), game=GameConfig(enabled=False)).validate()
    assert DataConfig().extra_clean_items == 0
    with pytest.raises(ConfigError, match=r"data.extra_clean_items=-1 is invalid: allowed an int >= 0"):
        TrainConfig(data=DataConfig(extra_clean_items=-1), game=GameConfig(enabled=False)).validate()
    with pytest.raises(ConfigError, match=r"data.extra_clean_items=4 is invalid with game.enabled=true"):
        TrainConfig(data=DataConfig(extra_clean_items=4)).validate()


def test_residual_decoding_is_the_tiny_default_and_token_adversaries_ignore_it():
    """The tiny base's VQ is lossy, so candidates are x + G(z + δ) − G(z) unless asked otherwise; a
    token-space adversary decodes nothing, so the default must not make it invalid."""
    from unigame.train.config import GameConfig, TrainConfig

    assert GameConfig().residual_decode is True
    cfg = TrainConfig()
    cfg.game.adversary, cfg.game.filter = "noise", "none"
    cfg.validate()


def test_schedule_is_alternating_by_default_and_simultaneous_refuses_what_it_cannot_do():
    """The paper's alternation stays the default; the joint step moves each player once and trains on
    the challenge forward's own candidates, so it refuses more steps per player and official mining."""
    from unigame.train.config import GameConfig, TrainConfig

    assert GameConfig().schedule == "alternating"
    TrainConfig(game=GameConfig(schedule="simultaneous")).validate()
    TrainConfig(game=GameConfig(enabled=False, schedule="simultaneous", challenge_steps=2)).validate()  # SFT
    with pytest.raises(ConfigError) as err:
        TrainConfig(
            game=GameConfig(
                schedule="simultaneous",
                challenge_steps=2,
                understand_steps=3,
                adversary="embedding",
                mining="official",
                filter="none",
            )
        ).validate()
    message = str(err.value)
    assert "game.challenge_steps=2 is invalid with game.schedule='simultaneous'" in message
    assert "game.understand_steps=3 is invalid with game.schedule='simultaneous'" in message
    assert "game.mining='official' is invalid with game.schedule='simultaneous'" in message
    with pytest.raises(
        ConfigError, match=r"game.schedule='together' is invalid: allowed alternating \| simultaneous"
    ):
        TrainConfig(game=GameConfig(schedule="together")).validate()


def test_replay_images_is_off_by_default_and_a_bool():
    from unigame.train.config import GameConfig, TrainConfig

    assert GameConfig().replay_images is False  # the buffer keeps latents: ~100x smaller than images
    with pytest.raises(ConfigError, match=r"game.replay_images='yes' is invalid: allowed true \| false"):
        TrainConfig(game=GameConfig(replay_images="yes")).validate()
