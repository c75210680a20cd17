"""Command-line entry points of the evaluation: `evaluate`, `compare`, `generate`.

Plain typed functions with an "Args:" docstring, so `unigame.cli` exposes them with jsonargparse's
`auto_cli` (`unigame eval --suite pope --data ~/data/pope --lora runs/unigame/lora`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from unigame.eval.benchmarks import BENCHMARK_SUITES, run_benchmark
from unigame.eval.report import compare_runs, headline, write_run
from unigame.eval.shapes_suite import DEFAULT_SIZES, QUICK_SIZES, run_shapes_suite, shapes_geneval_prompts

__all__ = ["SUITES", "checkpoint_prompt", "compare", "evaluate", "generate", "load_model"]

SUITES: tuple[str, ...] = ("shapes", *BENCHMARK_SUITES)
PromptName = Literal["tiny", "janus_pro"]


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _model_path(model: str | None) -> Path:
    """`model`, or the cached tiny Janus base; evaluation never trains one implicitly."""
    if model is not None:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--model {model!r} is not a model directory")
        return path
    from unigame.pretrain.base import BaseConfig, default_base_path, is_complete

    path = default_base_path(BaseConfig())
    if not is_complete(path):
        raise FileNotFoundError(
            f"no --model given and no cached tiny Janus base at {path}: run `unigame base` first, "
            "or pass --model DIR"
        )
    return path


def load_model(
    model: str | None, lora: str | None = None, device: str = "auto", prompt: PromptName = "tiny"
) -> tuple[Any, Path]:
    """(JanusAdapter on `device`, model directory), with LoRA weights loaded on top when `lora` is set.

    The LoRA folder is a peft adapter (`adapter_config.json` + safetensors, as `save_pretrained`
    writes it); it is checked against the base (`unigame.models.lora.check_lora_fits`: an error
    naming both folders when it does not fit) and injected into the adapter's model in place.
    """
    from unigame.models.janus import JANUS_PRO_PROMPT, TINY_PROMPT, JanusAdapter

    path = _model_path(model)
    adapter = JanusAdapter.from_pretrained(
        path, device=_device(device), prompt=JANUS_PRO_PROMPT if prompt == "janus_pro" else TINY_PROMPT
    )
    if lora is not None:
        from unigame.models.lora import load_lora

        lora_dir = Path(lora).expanduser()
        peft_model = load_lora(adapter.model, path, lora_dir)  # checked against the base, injected in place
        adapter.model.eval()
        if (lora_dir / GENERATOR_ROLE / "adapter_config.json").is_file():
            # An Ask-Solve-Generate checkpoint: its Generator role generates, its Solver understands.
            peft_model.load_adapter(str(lora_dir / GENERATOR_ROLE), adapter_name=GENERATOR_ROLE)
            peft_model.set_adapter("default")
            adapter.model.eval()
            adapter = GeneratorRole(adapter, peft_model)
    return adapter, path


GENERATOR_ROLE = "generator"


class GeneratorRole:
    """An adapter whose text-to-image calls run with a second peft adapter, the Generator, active
    (an Ask-Solve-Generate checkpoint keeps one LoRA per role); every other call, understanding
    included, runs with the `default` adapter (the Solver). Anything else passes through."""

    _GENERATION = frozenset({"generate_images", "generate_latents", "generate_codes"})

    def __init__(self, adapter: Any, peft_model: Any) -> None:
        self._adapter, self._peft = adapter, peft_model

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._adapter, name)
        if name not in self._GENERATION:
            return value

        def generate(*args: Any, **kwargs: Any) -> Any:
            self._peft.set_adapter(GENERATOR_ROLE)
            try:
                return value(*args, **kwargs)
            finally:
                self._peft.set_adapter("default")

        return generate


def _shapes_config(model_path: Path) -> Any:
    """The ShapesWorld the base was trained on (from its manifest, or from the export manifest of a
    merged run), else the default world."""
    from unigame.data.shapes import ShapesConfig
    from unigame.export import EXPORT_MANIFEST
    from unigame.pretrain.base import MANIFEST

    manifest = model_path / MANIFEST
    if manifest.is_file():
        return ShapesConfig(**json.loads(manifest.read_text())["config"]["shapes"])
    exported = model_path / EXPORT_MANIFEST
    if exported.is_file() and json.loads(exported.read_text()).get("shapes"):
        return ShapesConfig(**json.loads(exported.read_text())["shapes"])
    return ShapesConfig()


def checkpoint_prompt(model_path: str | Path, lora: str | Path | None = None) -> PromptName:
    """The prompt layout a checkpoint was trained with: the run's `model.prompt` (config.yaml of the
    run that holds `lora`), else the one recorded by `unigame export`, else `tiny` for a unigame
    tiny base (it has a unigame_base.json) and `janus_pro` for any other Janus checkpoint."""
    from unigame.export import EXPORT_MANIFEST
    from unigame.pretrain.base import MANIFEST

    recorded = None
    if lora is not None:
        run_config = Path(lora).expanduser().parent.parent.parent / "config.yaml"
        if run_config.is_file():
            import yaml

            recorded = ((yaml.safe_load(run_config.read_text()) or {}).get("model") or {}).get("prompt")
    exported = Path(model_path) / EXPORT_MANIFEST
    if recorded is None and exported.is_file():
        recorded = json.loads(exported.read_text()).get("prompt")
    if recorded in ("tiny", "janus_pro"):
        return recorded
    return "tiny" if (Path(model_path) / MANIFEST).is_file() else "janus_pro"


def _scorer(model_path: Path, device: str) -> Any | None:
    from unigame.models.clip import ClipScorer

    clip = model_path / "clip"
    if not clip.is_dir():
        print(f"note: no CLIP scorer at {clip}; UnifiedBench uses the model's own vision encoder only")
        return None
    return ClipScorer.from_pretrained(clip, device=device)


def evaluate(
    suite: str = "shapes",
    model: str | None = None,
    lora: str | None = None,
    data: str | None = None,
    output: str = "runs/eval",
    quick: bool = False,
    seed: int = 0,
    skip_bad: bool = False,
    device: str = "auto",
    prompt: PromptName = "tiny",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a unified model on one suite; writes metrics.json, report.md, report.html and plots.

    Args:
        suite: shapes (the ShapesWorld suite: VQA, POPE, NaturalBench-style, adversarial, PGD,
            GenEval-style, UnifiedBench, Nonunified, Consistency), or a public benchmark from local
            files: vqav2, advqa, pope, naturalbench, mmmu (see docs/benchmarks.md for the layouts).
        model: model directory (JanusForConditionalGeneration + tokenizer). Default: the cached
            tiny Janus base (`unigame base` builds it).
        lora: a peft LoRA folder loaded on top of the model (e.g. a checkpoint's `lora/`).
        data: benchmark data folder or file (required for every suite but shapes).
        output: run folder for metrics.json and the reports (overwritten).
        quick: CI sizes for the shapes suite (seconds instead of about a minute).
        seed: seed of every ShapesWorld split, prompt and sample (benchmarks: MMMU's fallback seed).
        skip_bad: skip malformed benchmark rows and unreadable images (listed in the report)
            instead of stopping at the first.
        device: torch device, or auto (cuda when available).
        prompt: prompt layout: tiny (the tiny base) or janus_pro (Janus-Pro's chat format).
        progress: show progress bars (the shapes suite).
    """
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is not a suite; allowed: {', '.join(SUITES)}")
    if suite != "shapes" and data is None:
        raise ValueError(
            f"suite={suite!r} reads local benchmark files: pass --data FOLDER (see docs/benchmarks.md)"
        )
    device = _device(device)
    started = datetime.now(timezone.utc)
    adapter, model_path = load_model(model, lora, device, prompt)
    if suite == "shapes":
        config = _shapes_config(model_path)
        sizes = QUICK_SIZES if quick else DEFAULT_SIZES
        result = run_shapes_suite(
            adapter, _scorer(model_path, device), config, sizes, seed, progress=progress
        )
        config_dict: dict[str, Any] = asdict(config)
    else:
        result = run_benchmark(suite, adapter, data, skip_bad=skip_bad, seed=seed)
        config_dict = {"reference_prompts": True, "prompt": prompt}
    finished = datetime.now(timezone.utc)
    from unigame.eval.report import build_record

    record = build_record(
        result,
        suite=suite,
        model_path=str(model_path),
        lora=lora,
        adapter_name=type(adapter).__name__,
        data=data,
        config=config_dict,
        seed=seed,
        started=started,
        finished=finished,
        device=device,
    )
    paths = write_run(output, record, result.panels)
    if suite == "shapes":  # the exact prompts, reusable with `unigame generate PROMPTS`
        prompts = shapes_geneval_prompts(config, sizes.generation, seed)
        (Path(output) / "geneval_metadata.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    rows = headline(record)
    print(f"\n{suite}: {len(rows)} headline metrics ({record['wall_s']:.1f} s)")
    for label, _key, value in rows:
        print(f"  {label:<40} {value:.4f}")
    if result.skipped:
        print(f"  skipped rows: {sum(len(v) for v in result.skipped.values())} (see {paths['markdown']})")
    print(f"Wrote {paths['metrics']}, {paths['markdown']}, {paths['html']}")
    return record


def compare(runs: list[str], output: str | None = None) -> str:
    """Print runs side by side as a Markdown table, with deltas against the first run; with
    --output, also write compare.md and a self-contained compare.html (the table, per-question-kind
    accuracy bars, each run's training curves and hard-sample panels).

    Args:
        runs: evaluation folders (or their metrics.json files); the first is the reference.
        output: folder for compare.md, compare.html and their figures (default: print only).
    """
    table = compare_runs(runs)
    print(table)
    if output is not None:
        from unigame.eval.comparison import write_comparison

        paths = write_comparison(runs, output)
        print(f"Wrote {paths['markdown']} and {paths['html']}")
    return table


def generate(
    prompts: str,
    model: str | None = None,
    lora: str | None = None,
    output: str = "runs/geneval",
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    skip_bad: bool = False,
    device: str = "auto",
    prompt: PromptName = "tiny",
) -> list[str]:
    """Generate images for GenEval prompts in the folder layout GenEval's evaluator reads.

    Writes `output/{index:05d}/metadata.jsonl` and `output/{index:05d}/samples/{k:04d}.png`.

    Args:
        prompts: GenEval's evaluation_metadata.jsonl (or a ShapesWorld one written by the shapes suite).
        model: model directory; default: the cached tiny Janus base.
        lora: a peft LoRA folder loaded on top of the model.
        output: folder for the image folders.
        images_per_prompt: samples per prompt (GenEval uses 4).
        seed: seed of the sampling generator.
        batch_size: prompts per text-to-image call.
        skip_bad: skip malformed metadata lines (reported) instead of stopping.
        device: torch device, or auto (cuda when available).
        prompt: prompt layout: tiny or janus_pro.
    """
    from unigame.data.formats import write_geneval_images
    from unigame.data.loaders import load_geneval_prompts
    from unigame.eval.common import generate as generate_images

    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt={images_per_prompt} must be >= 1")
    items = load_geneval_prompts(prompts, skip_bad=skip_bad)
    for err in items.skipped:
        print(f"skipped: {err}")
    if not items:
        raise ValueError(f"{prompts}: no usable prompts")
    adapter, _ = load_model(model, lora, device, prompt)
    adapter.model.eval()
    start = time.perf_counter()
    texts = [item.prompt for item in items for _ in range(images_per_prompt)]
    images = generate_images(
        adapter, texts, torch.Generator().manual_seed(seed), batch_size, "GenEval images"
    )
    k = images_per_prompt
    folders = write_geneval_images(
        items, [list(images[i * k : (i + 1) * k]) for i in range(len(items))], output
    )
    print(
        f"Wrote {len(texts)} images for {len(items)} prompts to {output} in {time.perf_counter() - start:.1f} s"
    )
    return [str(f) for f in folders]
