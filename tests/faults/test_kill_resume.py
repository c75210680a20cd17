"""Kill a run at seeded random points, resume with `--resume auto` semantics: the result is the
uninterrupted run's, bitwise on CPU. Kills land mid-step (after the challenger has moved, or
inside its own forward) and mid-checkpoint-write (a real SIGKILL of a writing process)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.checkpoint import find_latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from unigame.train.run_logging import read_metrics

from ..train.conftest import PaletteScorer, small_config

STEPS = 6


class InjectedCrash(RuntimeError):
    """Stands in for the process dying: nothing after it runs, the in-memory state is lost."""


def _config():
    cfg = small_config(steps=STEPS, filter="none")  # random-VQ images fail any semantic filter
    cfg.logging.checkpoint_every = 2
    return cfg


def _run(tmp_path, make_janus, records, name, crash_at=None, where="understand", resume=None):
    trainer = UniGameTrainer(_config(), tmp_path / name, make_janus(), PaletteScorer(), records)
    trainer.setup(resume=resume)
    if crash_at is not None:
        # challenge: inside the challenger's forward; understand: after the challenger has stepped
        method = "understanding_loss" if where == "challenge" else "understanding_loss_from_tokens"
        original = getattr(trainer.adapter, method)

        def crash(*args, **kwargs):
            if trainer.step + 1 == crash_at:
                raise InjectedCrash(f"killed during step {crash_at} ({where})")
            return original(*args, **kwargs)

        setattr(trainer.adapter, method, crash)
    try:
        trainer.train()
    except InjectedCrash:
        pass
    finally:
        trainer.cleanup()
    return trainer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_at_a_random_step_then_resume_auto_equals_the_uninterrupted_run(
    tmp_path, make_janus, records, seed
):
    rng = random.Random(seed)
    crash_at, where = rng.randint(2, STEPS), rng.choice(["challenge", "understand"])
    whole = _run(tmp_path, make_janus, records, "whole")

    killed = _run(tmp_path, make_janus, records, "split", crash_at=crash_at, where=where)
    assert killed.step == crash_at - 1  # it died inside step crash_at
    checkpoint = resolve_resume("auto", tmp_path / "split")
    saved = (crash_at - 1) // 2 * 2  # the newest periodic checkpoint before the kill
    assert (checkpoint.name if checkpoint else None) == (
        f"step-{saved:08d}" if saved else None
    )  # None: fresh
    resumed = _run(tmp_path, make_janus, records, "split", resume=checkpoint)
    assert resumed.step == STEPS

    expected, got = whole.trainable_state(), resumed.trainable_state()
    assert expected.keys() == got.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], got[name]), (name, crash_at, where)
    a, b = whole.buffer.state_dict(), resumed.buffer.state_dict()
    assert torch.equal(a["latents"], b["latents"]) and a["metadata"] == b["metadata"]
    full, split = (
        read_metrics(tmp_path / "whole" / "metrics.csv"),
        read_metrics(tmp_path / "split" / "metrics.csv"),
    )
    assert split["step"].tolist() == list(range(1, STEPS + 1))  # rows after the checkpoint were rewritten
    for column in ("loss_understand", "ce_adv", "eps", "buffer_size"):
        assert full[column].tobytes() == split[column].tobytes(), column


_WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    from unigame.train import checkpoint as ckpt

    run = sys.argv[1]
    ckpt.save_checkpoint(run, 1, None, {"w": torch.ones(1000)}, {"step": 1})
    real_fsync = ckpt._fsync_tree

    def stall(root):  # every file of step 2 is written into staging; the rename has not happened
        real_fsync(root)
        open(os.path.join(run, "writing"), "w").close()
        time.sleep(120)

    ckpt._fsync_tree = stall
    ckpt.save_checkpoint(run, 2, None, {"w": torch.full((1000,), 2.0)}, {"step": 2})
    """
)


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_to_resume(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "writing").exists():
            assert process.poll() is None, "the writer exited before the write"
            assert time.monotonic() < deadline, "the writer never reached the write"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(n.startswith(".tmp-step-00000002") for n in leftovers) and "step-00000002" not in leftovers
    resumed = resolve_resume("auto", tmp_path)
    assert resumed.name == "step-00000001" and load_checkpoint(resumed).meta == {"step": 1}
    # the next run saves over the debris and resumes from its own newest checkpoint
    save_checkpoint(tmp_path, 2, None, {"w": torch.zeros(1)}, {"step": 2})
    assert find_latest_checkpoint(tmp_path).name == "step-00000002"
