"""Load a saved peft LoRA onto a base model, after checking that it fits that base.

peft alone accepts a LoRA trained on another base too often: a target regex that matches extra
modules gets fresh zero-initialised layers (a silent partial adapter), and a shape mismatch fails
deep inside `load_state_dict` with a tensor-size message that names neither folder. `check_lora_fits`
reads only the adapter's config and its safetensors header (no weights), so a mismatch is reported,
naming both folders, before anything is evaluated, merged or exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from peft import PeftModel

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "LoraMismatchError", "check_lora_fits", "load_lora"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."  # how peft names the wrapped model's modules in saved keys
_LORA_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
_SHOWN = 5  # mismatches listed in a message before "... and N more"


class LoraMismatchError(ValueError):
    """The LoRA folder does not fit the base model; the message names both folders."""


def check_lora_fits(model: nn.Module, model_path: str | Path, lora_dir: str | Path) -> None:
    """Raise unless every LoRA weight in `lora_dir` lands on a base module of the right shape and
    every base module the adapter's `target_modules` selects has LoRA weights.

    `model` is the base loaded from `model_path` (used only in messages). Only LoRA on linear
    layers (`lora_A`/`lora_B`, what unigame trains) is checked key by key.
    """
    from peft import PeftConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from safetensors import safe_open

    lora_dir = Path(lora_dir)
    where = f"LoRA {str(lora_dir)!r} does not fit the base model {str(model_path)!r}"
    if not (lora_dir / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(
            f"{str(lora_dir)!r} is not a peft adapter folder (no {ADAPTER_CONFIG}); pass the `lora/` "
            "folder of a training checkpoint (RUN/checkpoints/step-N/lora)"
        )
    if not (lora_dir / ADAPTER_WEIGHTS).is_file():  # peft would unpickle an adapter_model.bin
        raise FileNotFoundError(
            f"{str(lora_dir)!r} has no {ADAPTER_WEIGHTS}; pickled adapter weights are not loaded"
        )
    config = PeftConfig.from_pretrained(str(lora_dir))
    trained_on = json.loads((lora_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    hint = f" (the adapter was trained on {trained_on!r})" if trained_on else ""
    if getattr(config, "peft_type", None) is None or str(config.peft_type.value) != "LORA":
        raise LoraMismatchError(f"{where}: {ADAPTER_CONFIG} holds a {config.peft_type} adapter, not LoRA")

    modules = dict(model.named_modules())
    problems: list[str] = []
    covered: set[str] = set()
    with safe_open(str(lora_dir / ADAPTER_WEIGHTS), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 - safe_open is not a Mapping
            suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
            if suffix is None:
                continue
            name = key.removeprefix(_PEFT_PREFIX).removesuffix(suffix)
            seen = name in covered  # lora_A and lora_B of one module: report a missing module once
            covered.add(name)
            module = modules.get(name)
            if module is None or not isinstance(module, nn.Linear):
                if not seen:
                    kind = (
                        "no such module"
                        if module is None
                        else f"a {type(module).__name__}, not a Linear layer,"
                    )
                    problems.append(f"{name} ({kind} in the base)")
                continue
            shape = tuple(weights.get_slice(key).get_shape())
            # lora_A: (r, in_features); lora_B: (out_features, r)
            side, expected = (
                ("in", module.in_features) if suffix == ".lora_A.weight" else ("out", module.out_features)
            )
            got = shape[1] if side == "in" else shape[0]
            if got != expected:
                problems.append(
                    f"{name}: LoRA {_LORA_SUFFIXES[suffix]} has {side}_features {got}, base {expected}"
                )
    if not covered:
        problems.append(f"{ADAPTER_WEIGHTS} holds no lora_A/lora_B weights")
    selected = {
        name
        for name, m in modules.items()
        if isinstance(m, nn.Linear) and check_target_module_exists(config, name)
    }
    if not selected:
        problems.append(f"target_modules {config.target_modules!r} selects no module of the base")
    unweighted = sorted(selected - covered)
    if unweighted and covered:
        problems += [f"{name} (selected by target_modules, no LoRA weights)" for name in unweighted]
    if problems:
        shown = "; ".join(problems[:_SHOWN])
        more = f"; ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise LoraMismatchError(f"{where}{hint}: {shown}{more}")


def load_lora(model: nn.Module, model_path: str | Path, lora_dir: str | Path) -> PeftModel:
    """Check the LoRA against the base (`check_lora_fits`), then inject it into `model` in place.

    Returns the `PeftModel`; `model` itself now holds the LoRA layers, so an adapter built around
    it answers with the LoRA on.
    """
    import warnings

    from peft import PeftModel

    check_lora_fits(model, model_path, lora_dir)
    with warnings.catch_warnings():
        # Workaround: peft 0.21 calls transformers' deprecated `is_gradient_checkpointing` (a
        # FutureWarning on every load); drop this filter once peft uses `is_activation_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(lora_dir))
