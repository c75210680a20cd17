"""Load the model and the filter's scorer named by a `ModelConfig`: the one place the engine names model families.

The trainer itself only sees the `UnifiedModel` protocol; this module turns a directory into a
`JanusAdapter` (the adapter serving the tiny Janus and Janus-Pro checkpoints), or an `Emu3Adapter`
when its config.json says `model_type: emu3`, and checks, before trusting Janus weights, that the
directory holds every module the game uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from unigame.train.config import ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    from unigame.models.clip import ClipScorer
    from unigame.models.emu3 import Emu3Adapter
    from unigame.models.janus import JanusAdapter

__all__ = ["JANUS_MODULES", "load_adapter", "load_scorer", "resolve_model_path"]

ADAPTER_TRIED = "JanusAdapter (transformers JanusForConditionalGeneration)"
# Sub-config in config.json -> (module it builds, what the game uses it for).
JANUS_MODULES: dict[str, tuple[str, str]] = {
    "vision_config": ("model.vision_model", "the understanding branch's vision encoder Enc"),
    "vq_config": ("model.vqmodel", "the VQ autoencoder: latents z and the decoder G"),
    "text_config": ("model.language_model", "the language model that LoRA adapts"),
}


def resolve_model_path(cfg: ModelConfig) -> Path:
    """`model.path`, or the cached tiny Janus base (built now if missing: minutes on a laptop CPU)."""
    if cfg.path is not None:
        return Path(cfg.path).expanduser()
    from unigame.pretrain.base import BaseConfig, build_base, default_base_path, is_complete

    path = default_base_path(BaseConfig())
    if not is_complete(path):
        print(f"model.path not set and no cached tiny Janus base at {path}: building it (`unigame base`).")
        path = build_base(BaseConfig())
    return path


def _check_janus_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"model.path={str(path)!r} does not exist (adapter tried: {ADAPTER_TRIED}).")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"model.path={str(path)!r} has no config.json, so no model modules can be found "
            f"(adapter tried: {ADAPTER_TRIED})."
        )
    config = json.loads(config_file.read_text())
    missing = [
        f"{module} ({key}: {role})" for key, (module, role) in JANUS_MODULES.items() if not config.get(key)
    ]
    if config.get("model_type") != "janus" or missing:
        found = config.get("model_type", "<none>")
        raise ValueError(
            f"model.path={str(path)!r} (model_type {found!r}) lacks the expected module(s): "
            f"{'; '.join(missing) or 'model_type must be janus'}. Adapter tried: {ADAPTER_TRIED}. "
            "For another unified-model family, write an adapter implementing "
            "unigame.train.protocol.UnifiedModel and pass it to UniGameTrainer."
        )
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"model.path={str(path)!r} has no tokenizer_config.json (adapter tried: {ADAPTER_TRIED})."
        )


def load_adapter(cfg: ModelConfig, path: Path | None = None) -> JanusAdapter | Emu3Adapter:
    """Load `path` (default: `resolve_model_path(cfg)`) offline as a `JanusAdapter` on `model.device`,
    every weight accounted for, or as an `Emu3Adapter` for an Emu3 directory."""
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from unigame.models.janus import JANUS_PRO_PROMPT, TINY_PROMPT, JanusAdapter

    path = resolve_model_path(cfg) if path is None else path
    if _model_type(path) == "emu3":
        return _load_emu3(cfg, path)
    _check_janus_dir(path)
    if cfg.prompt == "emu3_chat":
        raise ValueError(
            f"model.prompt='emu3_chat' does not fit the Janus model at {str(path)!r}: use janus_pro or tiny."
        )
    model, info = JanusForConditionalGeneration.from_pretrained(
        path,
        local_files_only=True,
        output_loading_info=True,
        use_safetensors=True,  # a pickled pytorch_model.bin could run code when loaded
        trust_remote_code=cfg.trust_remote_code,
    )
    missing = info.get("missing_keys") or []
    frozen = {module for module, _ in JANUS_MODULES.values()} | {"model.aligner", "model.generation_head"}
    absent = sorted({m for m in frozen for key in missing if key.startswith(m + ".")})
    if absent:
        raise ValueError(
            f"model.path={str(path)!r} has no weights for module(s) {', '.join(absent)} (they would be "
            f"random); adapter tried: {ADAPTER_TRIED}."
        )
    tokenizer = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=cfg.trust_remote_code
    )
    prompt = JANUS_PRO_PROMPT if cfg.prompt == "janus_pro" else TINY_PROMPT
    return JanusAdapter(model.to(torch.device(cfg.device)).eval(), tokenizer, prompt)


def _model_type(path: Path) -> str | None:
    config_file = path / "config.json"
    return json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None


def _load_emu3(cfg: ModelConfig, path: Path) -> Emu3Adapter:
    from unigame.models.emu3 import EMU3_CHAT_PROMPT, TINY_EMU3_PROMPT, Emu3Adapter

    if cfg.prompt == "janus_pro":
        raise ValueError(
            f"model.prompt='janus_pro' does not fit the Emu3 model at {str(path)!r}: use emu3_chat or tiny."
        )
    prompt = EMU3_CHAT_PROMPT if cfg.prompt == "emu3_chat" else TINY_EMU3_PROMPT
    return Emu3Adapter.from_pretrained(path, device=cfg.device, prompt=prompt)


def load_scorer(cfg: ModelConfig, model_path: Path) -> ClipScorer:
    """The semantic filter's CLIP/SigLIP scorer: `model.scorer_path`, else `<model.path>/clip`."""
    from unigame.models.clip import ClipScorer

    path = Path(cfg.scorer_path).expanduser() if cfg.scorer_path else model_path / "clip"
    try:
        return ClipScorer.from_pretrained(path, device=cfg.device, trust_remote_code=cfg.trust_remote_code)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"model.scorer_path: {err}. Point model.scorer_path at a local CLIP/SigLIP directory, "
            "or set game.filter none (the cosine filter also uses its image features)."
        ) from err
