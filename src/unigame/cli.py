"""The `unigame` command line: one subcommand per job, configs from dataclasses via jsonargparse.

Every subcommand accepts `--config FILE.yaml` and dotted overrides (`--cfg.training.janus_steps 500`);
an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from unigame.eval.run import compare, evaluate, generate
from unigame.game.run import train
from unigame.game.trainer import NonFiniteRunError
from unigame.pretrain.base import BaseConfig


def base(cfg: BaseConfig = BaseConfig(), output: str | None = None, force: bool = False) -> None:  # noqa: B008
    """Build (or load from cache) the tiny Janus base and print its evaluation.

    Args:
        cfg: the base recipe (seed, ShapesWorld, model sizes, training steps).
        output: directory to write the base to (default: the user's cache dir, keyed by the config).
        force: rebuild even when a complete base is cached.
    """
    from unigame.eval.base_eval import format_base_table
    from unigame.pretrain.base import build_base, read_manifest

    path = build_base(cfg, output=output, force=force)
    manifest = read_manifest(path)
    print(f"\nTiny Janus base: {path}")
    print(f"Built in {manifest['timings']['total_s']:.0f} s on {manifest['torch_threads']} torch threads.\n")
    print(format_base_table(manifest["evaluation"]))


def demo(cfg: BaseConfig = BaseConfig(), output: str | None = None) -> None:  # noqa: B008
    """The main job: build or load the tiny Janus base and show its evaluation.

    Post-training (SFT vs UniGame) joins this command as the engine lands.

    Args:
        cfg: the base recipe.
        output: base directory (default: the user's cache dir).
    """
    base(cfg, output=output)


def main(argv: Sequence[str] | None = None) -> None:
    from jsonargparse import auto_cli

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 and args[0] == "compare" and not any(a.startswith("-") for a in args[1:]):
        args = ["compare", "[" + ",".join(_quote(a) for a in args[1:]) + "]"]  # `unigame compare RUN RUN...`
    if args and args[0] == "train" and "--trust-remote-code" in args:  # the flag transformers users know
        # appended last, so a recipe given with --cfg cannot turn it back off
        args = [a for a in args if a != "--trust-remote-code"] + ["--cfg.model.trust_remote_code=true"]
    try:
        commands = {
            "base": base,
            "demo": demo,
            "train": train,
            "eval": evaluate,
            "compare": compare,
            "generate": generate,
        }
        auto_cli(commands, args=args)
    except (ValueError, OSError, NonFiniteRunError) as err:  # bad config/data/path, divergence, full disk
        print(f"unigame: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _quote(path: str) -> str:
    """A run path as a YAML flow-list item (quoted, so commas and colons stay part of the path)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
