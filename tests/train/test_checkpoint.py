"""Checkpoint files: atomic writes that never damage the previous checkpoint, exact state round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from unigame.train import checkpoint as ckpt
from unigame.train.checkpoint import (
    CorruptCheckpointError,
    NonFiniteStateError,
    capture_rng,
    find_latest_checkpoint,
    load_checkpoint,
    optimizer_state,
    resolve_resume,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
    verify_checkpoint,
)


def _save(run_dir, step, keep=2):
    return save_checkpoint(
        run_dir, step, None, {"w": torch.full((3,), float(step))}, {"step": step}, keep=keep
    )


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    first = _save(tmp_path, 1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2)
    assert find_latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first).meta == {"step": 1}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]  # no half-written dir left


def test_half_written_dirs_are_never_resumed_and_old_ones_are_pruned(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step-00000009-1").mkdir()  # a crash's leftover
    (
        tmp_path / "checkpoints" / "step-00000008"
    ).mkdir()  # renamed dirs always have state.json; this one lacks it
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if (p / "state.json").exists())
    assert names == ["step-00000002", "step-00000003"]
    assert find_latest_checkpoint(tmp_path).name == "step-00000003"
    assert resolve_resume("auto", tmp_path).name == "step-00000003"
    assert resolve_resume(str(tmp_path), "elsewhere").name == "step-00000003"  # a run dir
    assert resolve_resume("auto", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume(str(tmp_path / "nothing"), tmp_path)


def test_saving_the_same_step_twice_replaces_it(tmp_path):
    _save(tmp_path, 4)
    save_checkpoint(tmp_path, 4, None, {"w": torch.zeros(1)}, {"again": True})
    assert load_checkpoint(find_latest_checkpoint(tmp_path)).meta == {"again": True}


def test_optimizer_state_round_trip_is_exact():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(2))]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    tensors, meta = optimizer_state(opt, "optim.x")
    import json

    meta = json.loads(json.dumps(meta))  # what the checkpoint's JSON gives back
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params], lr=1e-2)
    restore_optimizer(fresh, "optim.x", tensors, meta)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_rng_round_trip():
    import json

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    tensors, meta = capture_rng()
    meta = json.loads(json.dumps(meta))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(tensors, meta)
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_state_is_never_written(tmp_path, bad):
    first = _save(tmp_path, 1)
    lora = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lora.weight[0, 0] = bad
    with pytest.raises(
        NonFiniteStateError, match=r"step-00000002: 1 tensor\(s\) hold NaN/Inf \(lora:weight\)"
    ):
        save_checkpoint(tmp_path, 2, lora, {"w": torch.zeros(3)}, {"step": 2})
    with pytest.raises(NonFiniteStateError, match=r"\(optim.m\)"):
        save_checkpoint(
            tmp_path,
            2,
            None,
            {"optim.m": torch.tensor([0.0, bad]), "rng": torch.zeros(2, dtype=torch.uint8)},
            {},
        )
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]


def test_checksums_catch_damage_after_the_write(tmp_path):
    path = _save(tmp_path, 1)
    verify_checkpoint(path)
    data = bytearray((path / "state.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the tensor bytes: the file still parses
    (path / "state.safetensors").write_bytes(bytes(data))
    assert load_checkpoint(path).meta == {"step": 1}  # loadable, silently wrong without the checksum
    with pytest.raises(CorruptCheckpointError, match=r"state.safetensors is corrupt: .* bytes, SHA-256"):
        verify_checkpoint(path)
    (path / "state.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CorruptCheckpointError, match=r"state.safetensors is unreadable"):
        load_checkpoint(path)
