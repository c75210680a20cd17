"""No pickle is ever loaded, and code shipped in a model directory runs only when asked for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unigame.cli import main
from unigame.train import loading
from unigame.train.config import ModelConfig

SRC = Path(__file__).resolve().parents[2] / "src" / "unigame"


def test_the_source_never_unpickles():
    """torch.load, pickle and .bin weights are code execution on load; safetensors and JSON are not."""
    unsafe = re.compile(
        r"torch\.load\(|import (c?pickle|dill)|pickle\.loads?\(|joblib\.load|allow_pickle=True"
    )
    hits = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == [] or all("weights_only=True" in h for h in hits), hits


@pytest.mark.parametrize("trusted", [False, True])
def test_model_loading_follows_model_trust_remote_code(tmp_path, monkeypatch, trusted):
    from transformers import JanusForConditionalGeneration

    calls = []

    def record(path, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(JanusForConditionalGeneration, "from_pretrained", record)
    monkeypatch.setattr(loading, "_check_janus_dir", lambda path: None)
    with pytest.raises(RuntimeError, match="stop here"):
        loading.load_adapter(ModelConfig(path=str(tmp_path), trust_remote_code=trusted), tmp_path)
    assert calls[0]["trust_remote_code"] is trusted and calls[0]["use_safetensors"] is True


def test_trust_remote_code_flag_turns_the_key_on_and_is_off_by_default(capsys):
    for args, expected in ((["train"], "false"), (["train", "--trust-remote-code"], "true")):
        with pytest.raises(SystemExit):
            main([*args, "--print_config"])
        assert f"trust_remote_code: {expected}" in capsys.readouterr().out
