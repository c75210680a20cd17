"""The `unigame_janus` model class and its entry point against a minimal stand-in of lmms-eval's model
API (`lmms_eval.api.model.lmms`, `lmms_eval.api.instance.Instance`, `ModelManifest`), so they are
exercised whether or not lmms-eval is installed; tests/lmms/test_lmms_eval.py runs the real one."""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from importlib.metadata import entry_points

import pytest


class _CacheHook:
    def __init__(self) -> None:
        self.partials: list[tuple] = []

    def add_partial(self, attr, req, res) -> None:
        self.partials.append((attr, req, res))


class _Lmms:
    """lmms-eval's `lmms` base as far as a simple model uses it (v0.7: rank, world size, cache hook, task_dict)."""

    is_simple = True

    def __init__(self) -> None:
        self._rank = 0
        self._world_size = 1
        self.cache_hook = _CacheHook()
        self.task_dict: dict = {}


@dataclass(frozen=True)
class _Manifest:
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None


@pytest.fixture
def stand_in(monkeypatch):
    """Install the stand-in `lmms_eval` modules and import `unigame.lmms.model` against them."""
    modules = {
        "lmms_eval": types.ModuleType("lmms_eval"),
        "lmms_eval.api": types.ModuleType("lmms_eval.api"),
        "lmms_eval.api.model": types.ModuleType("lmms_eval.api.model"),
        "lmms_eval.api.instance": types.ModuleType("lmms_eval.api.instance"),
        "lmms_eval.models": types.ModuleType("lmms_eval.models"),
        "lmms_eval.models.registry_v2": types.ModuleType("lmms_eval.models.registry_v2"),
    }
    modules["lmms_eval.api.model"].lmms = _Lmms
    modules["lmms_eval.api.instance"].Instance = object
    modules["lmms_eval.models.registry_v2"].ModelManifest = _Manifest
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "unigame.lmms.model", raising=False)
    yield importlib.import_module("unigame.lmms.model")
    sys.modules.pop("unigame.lmms.model", None)  # never keep the class built on the stand-in


@dataclass
class _Request:
    args: tuple


def test_the_entry_point_names_the_model_class(stand_in):
    import unigame.lmms

    manifest = unigame.lmms.manifest()
    assert manifest == _Manifest(
        model_id="unigame_janus", simple_class_path="unigame.lmms.model.UnigameJanus"
    )
    module, name = manifest.simple_class_path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is stand_in.UnigameJanus
    registered = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "unigame_janus"]
    if registered:  # installed metadata (pip install -e .) carries the entry point of pyproject.toml
        assert registered[0].value == "unigame.lmms:manifest"


def test_the_model_answers_requests_and_fills_the_cache_hook(stand_in, tiny_model_dir):
    from PIL import Image

    model = stand_in.UnigameJanus(pretrained=str(tiny_model_dir), prompt="tiny", device="cpu", batch_size="2")
    assert model.batch_size == 2 and model.prompt == "tiny" and model.is_simple
    image = Image.new("RGB", (40, 24), (200, 30, 30))
    model.task_dict = {"t": {"validation": [{"image": image}, {"image": image}]}}
    visual = lambda doc: [doc["image"]]  # noqa: E731
    requests = [
        _Request((f"Is there a red {s}?", {"max_new_tokens": 4}, visual, i, "t", "validation"))
        for i, s in enumerate(["circle", "square"])
    ]
    answers = model.generate_until(requests)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert [(attr, res) for attr, _, res in model.cache_hook.partials] == [
        ("generate_until", a) for a in answers
    ]
    with pytest.raises(NotImplementedError, match="generate_until"):
        model.loglikelihood(requests)


def test_bad_model_args_stop_before_loading(stand_in, tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(
        ValueError, match="unknown model_args temprature; allowed: pretrained, lora, prompt, dtype"
    ):
        stand_in.UnigameJanus(pretrained=str(tiny_model_dir), temprature=0)
    with pytest.raises(ValueError, match="needs a number for --batch_size, got 'auto'"):
        stand_in.UnigameJanus(pretrained=str(tiny_model_dir), batch_size="auto")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="runs in one process"):
        stand_in.UnigameJanus(pretrained=str(tiny_model_dir))
