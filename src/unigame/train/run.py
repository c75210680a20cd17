"""The `train` entry point: config in, a trained LoRA + perturber, logs, plots and checkpoints out.

`unigame.cli` exposes `train` as a subcommand (jsonargparse `auto_cli`); it can also be called from
Python. Config errors (unknown keys, out-of-range values, missing paths) stop it before any model
is loaded. SIGINT/SIGTERM end it at the next step boundary with a checkpoint and exit code 130/143.
Under `accelerate launch -m unigame train ...` or `torchrun -m unigame train ...` every process runs
this function; the trainer shards the data and only rank 0 writes (docs/distributed.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from unigame.train.checkpoint import resolve_resume
from unigame.train.config import TrainConfig
from unigame.train.distributed import is_main_process
from unigame.train.signals import exit_code, stop_on_signals

__all__ = ["default_run_dir", "load_recipe", "train", "trainer_class"]


def default_run_dir(cfg: TrainConfig) -> Path:
    """`runs/<unigame-<adversary>|sft|internal-sft|internal-dpo|asg>-<YYYYmmdd-HHMMSS>` in the working directory."""
    if cfg.method != "unigame":
        mode = cfg.method
    else:
        mode = f"unigame-{cfg.game.adversary}" if cfg.game.enabled else "sft"
    return Path("runs") / f"{mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: TrainConfig = TrainConfig(),  # noqa: B008 - jsonargparse reads the default from the signature
    resume: str | None = None,
    output: str | None = None,
) -> None:
    """Post-train a unified model with UniGame (or the SFT baseline: --cfg.game.enabled false), with
    internal supervision (--cfg.method internal-sft | internal-dpo), or with Ask-Solve-Generate
    (--cfg.method asg, recipe configs/shapes_tiny_asg.yaml).

    Recipes: --cfg configs/shapes_tiny_unigame.yaml; override any key: --cfg.game.adversary noise.

    Args:
        cfg: the run's configuration (model, data, game, optim, logging).
        resume: continue a run: a checkpoint directory, a run directory (its newest checkpoint), or
            `auto` (the newest checkpoint in --output; a fresh start if there is none).
        output: run directory for metrics.csv, tb/, plots/ and checkpoints/ (default
            runs/<mode>-<timestamp>; with --resume PATH, the checkpoint's run directory).
    """
    cfg.validate()  # every config error at once, before anything is loaded
    if resume == "auto" and output is None:
        raise ValueError("--resume auto needs --output (the run directory to look in).")
    run_dir = Path(output) if output is not None else None
    if run_dir is None and resume is not None:
        run_dir = _run_dir_of(Path(resume))
    run_dir = run_dir or default_run_dir(cfg)
    checkpoint = resolve_resume(resume, run_dir)
    if resume == "auto" and checkpoint is None and is_main_process():
        print(f"--resume auto: no complete checkpoint in {run_dir}; starting fresh.")

    trainer = trainer_class(cfg.method)(cfg, run_dir)
    try:
        trainer.setup(resume=checkpoint)
        # From here a signal is a request, checked at step boundaries: the step in flight finishes
        # and is saved. The handlers stay on through the save, so a second signal cannot cut it.
        with stop_on_signals() as stop:
            trainer.train(stop=stop)
            path = trainer.save_checkpoint()
        if stop:
            print(
                f"\nunigame: stopped by {stop.name} after step {trainer.step}; checkpoint saved: {path}\n"
                f"resume with: --resume auto --output {run_dir}",
                flush=True,
            )
            raise SystemExit(exit_code(stop.signum))
        trainer.write_report()
        if trainer.dist.is_main:
            print(f"\nrun: {run_dir}\nfinal checkpoint (LoRA under lora/): {path}")
    finally:
        trainer.cleanup()


def trainer_class(method: str) -> type:
    """The trainer of `method` (imported on use: each method's package loads only when run)."""
    if method == "unigame":
        from unigame.methods.unigame.trainer import UniGameTrainer

        return UniGameTrainer
    if method in ("internal-sft", "internal-dpo"):
        from unigame.methods.internal.trainer import InternalSupervisionTrainer

        return InternalSupervisionTrainer
    if method == "asg":
        from unigame.methods.asg.trainer import AsgTrainer

        return AsgTrainer
    raise ValueError(f"method={method!r}: allowed unigame, internal-sft, internal-dpo, asg")


def _run_dir_of(resume: Path) -> Path:
    """A checkpoint dir `<run>/checkpoints/step-N` belongs to `<run>`; anything else is a run dir."""
    if resume.parent.name == "checkpoints":
        return resume.parent.parent
    return resume


def load_recipe(path: str | Path) -> TrainConfig:
    """Read a YAML recipe exactly as `train --cfg PATH` does (unknown keys are errors), validated."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TrainConfig, "cfg")
    namespace = parser.parse_args(["--cfg", str(path)])
    return parser.instantiate(namespace).cfg.validate()
