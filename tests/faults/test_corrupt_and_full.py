"""Damaged checkpoints and a full disk: resume falls back past a corrupt shard (or names the file),
and a failed write leaves the previous checkpoint intact with a message that says what to do."""

from __future__ import annotations

import errno

import pytest
import torch

from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train import checkpoint as ckpt
from unigame.train.checkpoint import (
    CorruptCheckpointError,
    find_latest_checkpoint,
    resolve_resume,
    verify_checkpoint,
)

from ..train.conftest import PaletteScorer, small_config


def _trainer(tmp_path, make_janus, records, steps=4, name="run"):
    cfg = small_config(steps=steps, filter="none")
    cfg.logging.checkpoint_every = 1
    cfg.logging.keep_checkpoints = 3
    trainer = UniGameTrainer(cfg, tmp_path / name, make_janus(), PaletteScorer(), records)
    trainer.setup()
    return trainer


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("shard", ["state.safetensors", "lora/adapter_model.safetensors"])
def test_resume_auto_skips_a_corrupt_shard_and_continues_exactly(tmp_path, make_janus, records, shard):
    whole = _trainer(tmp_path, make_janus, records, name="whole")
    whole.train()
    whole.cleanup()

    run = _trainer(tmp_path, make_janus, records)
    run.train(until_step=3)
    run.cleanup()
    newest = find_latest_checkpoint(tmp_path / "run")
    assert newest.name == "step-00000003"
    _flip_last_byte(newest / shard)

    with pytest.warns(
        UserWarning, match=rf"resuming from .*step-00000002, skipping .*step-00000003/{shard} is corrupt"
    ):
        checkpoint = resolve_resume("auto", tmp_path / "run")
    with pytest.raises(CorruptCheckpointError, match=rf"step-00000003/{shard} is corrupt"):
        resolve_resume(str(newest), tmp_path / "run")  # named explicitly: an error, not a fallback
    resumed = UniGameTrainer(run.cfg, tmp_path / "run", make_janus(), PaletteScorer(), records)
    resumed.setup(resume=checkpoint)
    assert resumed.step == 2
    resumed.train()
    resumed.cleanup()
    expected, got = whole.trainable_state(), resumed.trainable_state()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    verify_checkpoint(find_latest_checkpoint(tmp_path / "run"))  # step 4, rewritten cleanly


def test_no_valid_checkpoint_is_a_clear_error_naming_each_file(tmp_path, make_janus, records):
    run = _trainer(tmp_path, make_janus, records)
    run.train(until_step=2)
    run.cleanup()
    for step in (1, 2):
        (tmp_path / "run" / "checkpoints" / f"step-{step:08d}" / "state.json").write_text("{truncated")
    with pytest.raises(
        CorruptCheckpointError,
        match=r"no usable checkpoint.*step-00000002/state.json is not valid JSON.*step-00000001",
    ):
        resolve_resume("auto", tmp_path / "run")


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_says_so(
    tmp_path, make_janus, records, monkeypatch
):
    run = _trainer(tmp_path, make_janus, records, steps=4)
    run.train(until_step=2)
    previous = find_latest_checkpoint(tmp_path / "run")
    before = {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()}

    def disk_full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 64)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with pytest.raises(OSError) as info:
        run.train()  # the periodic checkpoint after step 3 fails: the run stops there
    run.cleanup()
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and run.step == 3
    assert "could not write checkpoint" in message and "step-00000003 (No space left on device)" in message
    assert f"the previous checkpoint {previous} is intact" in message and "--resume auto" in message
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000001", "step-00000002"]  # no staging debris, nothing pruned
    assert {p.relative_to(previous): p.read_bytes() for p in previous.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    assert resolve_resume("auto", tmp_path / "run") == previous
