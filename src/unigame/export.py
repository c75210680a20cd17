"""`unigame export RUN --merge --output DIR`: a run as a plain `transformers` checkpoint.

A run ends as a base directory plus a peft LoRA. Tools that load a plain model (lmms-eval's stock
models, vLLM, `from_pretrained` in a notebook) want one directory: the LoRA merged into the base
weights, saved as `JanusForConditionalGeneration` (safetensors, config, tokenizer), loadable
without unigame. The merge runs in float32 and the result is cast back to the base's dtype, so a
bf16 checkpoint does not round the LoRA update twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["EXPORT_MANIFEST", "export", "resolve_run"]

EXPORT_MANIFEST = "unigame_export.json"
# Files the merged checkpoint rewrites itself (weights, model config, tokenizer): not copied from the base.
_REWRITTEN_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
_REWRITTEN_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
)


def resolve_run(run: str | Path) -> tuple[Path, Path | None]:
    """(LoRA folder, run directory or None) for a run directory (its newest complete checkpoint),
    a checkpoint directory (`RUN/checkpoints/step-N`) or a LoRA folder itself."""
    path = Path(run).expanduser()
    if (path / "adapter_config.json").is_file():
        lora = path
    elif (path / "lora" / "adapter_config.json").is_file():
        lora = path / "lora"
    elif (path / "checkpoints").is_dir():
        from unigame.train.checkpoint import find_latest_checkpoint

        checkpoint = find_latest_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"{str(path)!r} has no complete checkpoint under checkpoints/ to export")
        lora = checkpoint / "lora"
    else:
        raise FileNotFoundError(
            f"{str(path)!r} is neither a run directory (with checkpoints/), a checkpoint directory "
            "(with lora/) nor a peft LoRA folder (with adapter_config.json)"
        )
    checkpoints = lora.parent.parent
    run_dir = checkpoints.parent if checkpoints.name == "checkpoints" else None
    return lora, run_dir


def _run_config(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def _base_path(model: str | None, run_config: dict[str, Any], lora: Path) -> Path:
    """--model, else the run's `model.path`, else the adapter's recorded base, else the cached tiny base."""
    if model is not None:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--model {model!r} is not a model directory")
        return path
    recorded = (run_config.get("model") or {}).get("path")
    if recorded:
        path = Path(recorded).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"the run's base model {recorded!r} (model.path in its config.yaml) does not exist: "
                "pass --model BASE_DIR"
            )
        return path
    trained_on = json.loads((lora / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if trained_on and Path(trained_on).is_dir():
        return Path(trained_on)
    from unigame.eval.run import _model_path

    return _model_path(None)


def _check_output(output: Path, force: bool, sources: list[Path]) -> None:
    resolved = output.resolve()
    for source in sources:
        source = source.resolve()
        if resolved == source or resolved in source.parents:
            raise ValueError(
                f"--output {str(output)!r} holds the export's own input {str(source)!r}; choose another directory"
            )
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {str(output)!r} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise FileExistsError(
            f"--output {str(output)!r} is not empty; pass --force to replace its contents, or choose an empty directory"
        )


def export(
    run: str,
    output: str | None = None,
    merge: bool = False,
    model: str | None = None,
    force: bool = False,
) -> str:
    """Merge a run's LoRA into its base and write a plain JanusForConditionalGeneration directory.

    The output holds model.safetensors, config.json, generation_config.json, the tokenizer, the
    base's other non-weight files (e.g. preprocessor_config.json) and its `clip/` scorer if any,
    and unigame_export.json (where it came from). Load it with
    `JanusForConditionalGeneration.from_pretrained(DIR)`; no unigame import is needed.

    Args:
        run: a run directory (its newest complete checkpoint), a checkpoint directory
            (RUN/checkpoints/step-N) or a peft LoRA folder.
        output: the directory to write (must be empty or absent unless --force).
        merge: merge the LoRA into the base weights (required: the LoRA alone is already a peft
            adapter under the checkpoint's lora/).
        model: the base model directory (default: the run's model.path from its config.yaml, else
            the adapter's recorded base, else the cached tiny Janus base).
        force: replace the contents of a non-empty output directory.
    """
    if not merge:
        raise ValueError(
            "unigame export writes merged checkpoints only: pass --merge (the LoRA alone is already a "
            "peft adapter, in the checkpoint's lora/ folder)"
        )
    if output is None:
        raise ValueError("--output DIR is required: the directory the merged model is written to")
    lora, run_dir = resolve_run(run)
    run_config = _run_config(run_dir)
    base = _base_path(model, run_config, lora)
    out = Path(output).expanduser()
    _check_output(out, force, [base, lora])
    config = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    if config.get("model_type") != "janus":
        raise ValueError(
            f"base model {str(base)!r} has model_type {config.get('model_type')!r}: unigame export merges "
            "Janus checkpoints (JanusForConditionalGeneration) only"
        )

    import torch
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from unigame.models.lora import load_lora

    # float32 for the merge itself: W + (alpha/r)·B·A in bf16 would round the update into the weights
    model_fp32 = JanusForConditionalGeneration.from_pretrained(
        base, local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
    )
    merged = load_lora(model_fp32, base, lora).merge_and_unload()  # checks the LoRA fits the base first
    target = getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float32"), None)
    if not isinstance(target, torch.dtype):  # e.g. "auto": keep float32
        target = torch.float32
    merged = merged.to(target).eval()
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True, trust_remote_code=False)

    # Write beside the output and rename, so a crash never leaves a half-written model at --output.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-tmp"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        for item in base.iterdir():  # processor configs, chat templates, the tiny base's CLIP scorer
            if (
                item.is_file()
                and item.name not in _REWRITTEN_NAMES
                and not item.name.endswith(_REWRITTEN_SUFFIXES)
            ):
                if not item.name.startswith("unigame_"):  # the base's own manifest describes the base
                    shutil.copy2(item, staging / item.name)
            elif item.is_dir() and item.name == "clip":
                shutil.copytree(item, staging / item.name)
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        manifest = _provenance(base, lora, run_dir, run_config, str(target).removeprefix("torch."))
        (staging / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)  # only reached when empty or --force
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"Merged {lora} into {base}\nWrote {out} (load with JanusForConditionalGeneration.from_pretrained)")
    return str(out)


def _provenance(
    base: Path, lora: Path, run_dir: Path | None, run_config: dict[str, Any], dtype: str
) -> dict[str, Any]:
    """unigame_export.json: the inputs of the merge, the run's prompt layout and the base's
    ShapesWorld (so `unigame eval --suite shapes --model DIR` asks the world the base knows)."""
    import unigame

    shapes = None
    base_manifest = base / "unigame_base.json"
    if base_manifest.is_file():
        shapes = json.loads(base_manifest.read_text()).get("config", {}).get("shapes")
    step = lora.parent.name.removeprefix("step-")
    return {
        "base": str(base),
        "lora": str(lora),
        "run": None if run_dir is None else str(run_dir),
        "step": int(step) if step.isdecimal() else None,
        "prompt": (run_config.get("model") or {}).get("prompt"),
        "dtype": dtype,
        "shapes": shapes,
        "unigame": unigame.__version__,
    }
