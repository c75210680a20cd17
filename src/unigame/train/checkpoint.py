"""One save/resume path for every mode: atomic checkpoint directories in the formats users load.

Layout of `<run>/checkpoints/step-00000100/`:

    lora/                 peft `save_pretrained` (adapter_config.json + adapter_model.safetensors),
                          loadable by `PeftModel.from_pretrained(base_model, ".../lora")`
    state.safetensors     every other tensor: perturber, buffer latents and hardness, optimiser
                          moments, torch RNG and generator states
    checksums.json        size and SHA-256 of every other file, so corruption after the write is found
    state.json            the rest: step, data position, counters, python/numpy RNG, optimiser
                          hyper-parameters, buffer metadata, the run's config

Atomicity: everything is written into a hidden sibling `.tmp-step-…`, each file and the directory
fsync'ed, then renamed into place; `state.json` is written last, and a directory counts as a
checkpoint only once renamed. Older checkpoints are pruned only after the new one is complete, so
a crash (or a full disk) at any moment leaves the previous checkpoint intact. A state holding a
NaN or Inf is refused before anything is written. `resolve_resume` verifies the checksums and
falls back past a damaged checkpoint with a warning naming the file. No pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "CHECKPOINT_DIR",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "NonFiniteStateError",
    "capture_rng",
    "checkpoint_dir",
    "find_latest_checkpoint",
    "load_checkpoint",
    "optimizer_state",
    "resolve_resume",
    "restore_optimizer",
    "restore_rng",
    "save_checkpoint",
    "verify_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step-"
_STATE_JSON = "state.json"
_STATE_TENSORS = "state.safetensors"
_CHECKSUMS = "checksums.json"
_LORA_DIR = "lora"


class CorruptCheckpointError(ValueError):
    """A checkpoint file is unreadable or differs from what was written; the message names the file."""


class NonFiniteStateError(ValueError):
    """The state to save holds NaN/Inf; saving it would make every later resume diverge."""


@dataclass
class LoadedCheckpoint:
    """What `load_checkpoint` returns: the checkpoint dir, its tensors and JSON metadata."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def lora_path(self) -> Path:
        return self.path / _LORA_DIR


# ------------------------------------------------------------------------------------------ writing
def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory bottom-up, so the rename commits durable bytes."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` of a run lives: `<run_dir>/checkpoints/step-<step, 8 digits>`."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{_PREFIX}{step:08d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    lora_model: nn.Module | None,
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    keep: int = 2,
    lora_state: dict[str, Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` atomically under `<run_dir>/checkpoints/`; keep the newest `keep`.

    `lora_model` is a peft model (saved with `save_pretrained`; from `lora_state`, its whole weights
    keyed like its state_dict, when given: FSDP's gathered shards); `tensors` go to safetensors
    (contiguous CPU copies are made here), `meta` to JSON. Raises `NonFiniteStateError` (nothing
    written) if a floating tensor or trainable LoRA weight is not finite, and `OSError` naming the
    checkpoint and the intact previous one if the write fails (e.g. ENOSPC).
    """
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    _check_finite(final, tensors, lora_model, lora_state)
    staging = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        if lora_model is not None:
            extra = {} if lora_state is None else {"state_dict": lora_state}
            lora_model.save_pretrained(str(staging / _LORA_DIR), safe_serialization=True, **extra)
        cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_file(cpu, str(staging / _STATE_TENSORS))
        (staging / _CHECKSUMS).write_text(json.dumps(_checksums(staging), indent=1))
        (staging / _STATE_JSON).write_text(json.dumps(meta, indent=1))  # last: marks the content complete
        _fsync_tree(staging)
        if final.exists():  # the same step saved again (e.g. a resumed run's last step): swap atomically
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(root)
    except OSError as err:
        previous = find_latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        message = (
            f"could not write checkpoint {final} ({err.strerror or err}); {kept}. "
            "Free disk space (or fix the path), then resume with --resume auto."
        )
        raise (OSError(err.errno, message) if err.errno is not None else OSError(message)) from err
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    for stale in _complete_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _check_finite(
    final: Path,
    tensors: dict[str, Tensor],
    lora_model: nn.Module | None,
    lora_state: dict[str, Tensor] | None = None,
) -> None:
    named = list(tensors.items())
    if lora_state is not None:
        named += [(f"lora:{n}", t) for n, t in lora_state.items()]
    elif lora_model is not None:
        named += [(f"lora:{n}", p) for n, p in lora_model.named_parameters() if p.requires_grad]
    bad = [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteStateError(
            f"not saving checkpoint {final}: {len(bad)} tensor(s) hold NaN/Inf ({', '.join(bad[:5])}); "
            "the earlier checkpoints are kept. Resume from one with a lower learning rate or fp32."
        )


def _checksums(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file under `directory`."""
    sums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        sums[path.relative_to(directory).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": digest.hexdigest(),
        }
    return sums


# ------------------------------------------------------------------------------------------ reading
def _complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (hidden staging dirs are never complete)."""
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and (p / _STATE_JSON).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None (not verified: see
    `resolve_resume`)."""
    found = _complete_checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return found[-1] if found else None


def verify_checkpoint(path: str | Path) -> None:
    """Raise `CorruptCheckpointError` naming the first file that is missing, unreadable, or not the
    bytes that were written (size and SHA-256 against checksums.json)."""
    path = Path(path)
    for name in (_STATE_JSON, _STATE_TENSORS):
        if not (path / name).is_file():
            raise CorruptCheckpointError(f"checkpoint {path} is incomplete: missing {path / name}")
    _read_json(path / _STATE_JSON)
    if not (path / _CHECKSUMS).is_file():  # written by a version without checksums: nothing to compare
        return
    expected = _read_json(path / _CHECKSUMS)
    actual = _checksums(path)
    for name, want in expected.items():
        if name not in actual:
            raise CorruptCheckpointError(f"checkpoint file {path / name} is missing")
        if actual[name] != want:
            raise CorruptCheckpointError(
                f"checkpoint file {path / name} is corrupt: {actual[name]['size']} bytes, SHA-256 "
                f"{actual[name]['sha256'][:12]}..., but {want['size']} bytes, {want['sha256'][:12]}... were written"
            )


def _latest_valid(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; each damaged newer one is named in a warning."""
    found = _complete_checkpoints(run_dir / CHECKPOINT_DIR)
    damaged = []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as err:
            damaged.append(str(err))
            continue
        if damaged:
            warnings.warn(
                f"resuming from {path}, skipping damaged newer checkpoint(s): {'; '.join(damaged)}",
                stacklevel=3,
            )
        return path
    if damaged:
        raise CorruptCheckpointError(
            f"no usable checkpoint under {run_dir / CHECKPOINT_DIR}: {'; '.join(damaged)}"
        )
    return None


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """`--resume` to a checkpoint dir: None -> None; `auto` -> the newest valid one in run_dir (None
    if there is none); a run dir -> its newest valid checkpoint; a checkpoint dir -> itself, verified.
    Half-written (staging) directories are never candidates; damaged ones are skipped with a warning."""
    if resume is None:
        return None
    if resume == "auto":
        return _latest_valid(Path(run_dir))
    path = Path(resume)
    if (path / _STATE_JSON).is_file():
        verify_checkpoint(path)
        return path
    latest = _latest_valid(path)
    if latest is None:
        raise FileNotFoundError(
            f"--resume {resume}: not a checkpoint directory (no {_STATE_JSON}) and no complete checkpoint "
            f"under {path / CHECKPOINT_DIR}; pass a checkpoint dir, a run dir, or 'auto'."
        )
    return latest


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"checkpoint file {path} is not valid JSON ({err})") from err


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint written by `save_checkpoint` (safetensors + JSON only, no pickle)."""
    path = Path(path)
    for name in (_STATE_JSON, _STATE_TENSORS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {name}")
    try:
        tensors = load_file(str(path / _STATE_TENSORS))
    except Exception as err:  # safetensors raises its own SafetensorsError for a damaged header
        raise CorruptCheckpointError(
            f"checkpoint file {path / _STATE_TENSORS} is unreadable ({err})"
        ) from err
    return LoadedCheckpoint(path, tensors, _read_json(path / _STATE_JSON))


# ------------------------------------------------------------------------------------- optimisers
def optimizer_state(
    optimizer: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimiser's state_dict into safetensors tensors (`prefix.<param>.<name>`) and JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(
    optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of `optimizer_state`: rebuild the state_dict and load it."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, slots in meta["scalars"].items():
        state.setdefault(int(index), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -------------------------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Python, numpy and torch (CPU + every CUDA device) global RNG states, as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
