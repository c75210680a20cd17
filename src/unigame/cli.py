"""The `unigame` command line: one subcommand per job, configs from dataclasses via jsonargparse.

Every subcommand accepts `--config FILE.yaml` and dotted overrides (`--cfg.training.janus_steps 500`);
an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from unigame.eval.run import compare, evaluate, generate
from unigame.export import export
from unigame.pretrain.base import BaseConfig
from unigame.reproduce import GridError, reproduce
from unigame.train.run import train
from unigame.train.trainer import NonFiniteRunError


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


def demo(
    cfg: BaseConfig = BaseConfig(),  # noqa: B008
    output: str = "runs/demo",
    quick: bool = False,
    steps: int | None = None,
    workers: int = 0,
) -> None:
    """The main job: build or load the tiny Janus base, post-train SFT and UniGame from it, evaluate
    all three with the shapes suite and print them side by side; writes <output>/report.md.

    Args:
        cfg: the base recipe (the base is cached, so a second demo starts at post-training).
        output: folder for the runs, evaluations and report.md.
        quick: a pipeline check in about a minute (tiny base under <output>/base, 10 steps, CI
            evaluation sizes): the numbers mean nothing.
        steps: post-training steps per method (default 300; quick: 10).
        workers: runs at a time (0: up to 3, one per CPU core).
    """
    from unigame.demo import run_demo

    run_demo(output=output, quick=quick, steps=steps, base=cfg, workers=workers)


BOOL_FLAGS = frozenset({"--quick", "--force", "--skip_bad", "--merge"})


def main(argv: Sequence[str] | None = None) -> None:
    from jsonargparse import auto_cli

    args = _bare_flags(list(sys.argv[1:] if argv is None else argv))
    if len(args) > 1 and args[0] == "compare":
        args = _compare_runs_list(args)  # `unigame compare RUN RUN... [--output DIR]`
    if args and args[0] == "reproduce":
        args = _space_separated_lists(args)
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
            "export": export,
            "reproduce": reproduce,
        }
        auto_cli(commands, args=args)
    except (
        ValueError,
        OSError,
        NonFiniteRunError,
        GridError,
    ) as err:  # bad config/data/path, divergence, full disk, failed grid jobs
        print(f"unigame: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _bare_flags(args: list[str]) -> list[str]:
    """`--quick` alone means `--quick true` (jsonargparse wants a value for every bool option)."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg in BOOL_FLAGS and (following is None or following.startswith("-")):
            out.append("true")
    return out


LIST_FLAGS = {"--rows": True, "--set": True, "--best": True, "--values": False, "--percentiles": False}


def _space_separated_lists(args: list[str]) -> list[str]:
    """`--best a=1 b=2` and `--values 0.1 0.2` (the items up to the next `--` flag) as one YAML flow
    list, the form jsonargparse reads for a list option; an already bracketed list is left alone.
    Names and KEY=VALUE items are quoted as strings, `--values`/`--percentiles` stay numbers."""
    out: list[str] = []
    i = 0
    while i < len(args):
        out.append(args[i])
        quoted = LIST_FLAGS.get(args[i])
        i += 1
        if quoted is None:
            continue
        items = []
        while i < len(args) and not args[i].startswith("--"):
            items.append(args[i])
            i += 1
        if len(items) == 1 and items[0].lstrip().startswith("["):
            out.append(items[0])
        elif items:
            out.append("[" + ",".join(_quote(a) if quoted else a for a in items) + "]")
    return out


def _compare_runs_list(args: list[str]) -> list[str]:
    """`compare A B --output D` -> `compare "[A,B]" --output D`: the bare run paths (anywhere among the
    options) as one YAML flow list, the form jsonargparse reads for the list positional. An already
    bracketed list, or a command with no bare path (e.g. `--help`), is left alone."""
    runs: list[str] = []
    options: list[str] = []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            options.append(arg)
            takes_value = "=" not in arg and arg not in ("-h", "--help")
            if takes_value and i + 1 < len(args):
                options.append(args[i + 1])
                i += 1
        else:
            runs.append(arg)
        i += 1
    if not runs or (len(runs) == 1 and runs[0].lstrip().startswith("[")):
        return args
    return ["compare", "[" + ",".join(_quote(a) for a in runs) + "]", *options]


def _quote(path: str) -> str:
    """A run path as a YAML flow-list item (quoted, so commas and colons stay part of the path)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
