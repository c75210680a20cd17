"""Several processes = one process with the same global batch: a 2-process gloo run on CPU (launched by
`torchrun`) against in-process 1-process runs, in SFT and UniGame modes; exact multi-process resume;
`accelerate launch -m unigame train` end to end; the batch shards; one process without a launcher; and the
same for FSDP (2 processes sharding the language model with FSDP2 = 1 process, FSDP checkpoints)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from unigame.data.splits import build_split
from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.models.janus import JanusAdapter
from unigame.models.tiny_janus import build_tiny_janus
from unigame.train.batches import RecordBatches
from unigame.train.distributed import Distributed, _warn_ignored_fsdp_settings, is_sharded, shard_slice
from unigame.train.run_logging import read_metrics

from ._distributed_worker import FSDP_LAYERS, SIMULTANEOUS, SMALL, UNIGAME, config
from .test_run import janus_dir  # noqa: F401 - the fixture: a tiny random Janus saved as a model directory

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
# Tolerance of 2 processes vs 1: the ranks' forward passes run on half batches and their gradients are
# averaged in another order, so results differ by float32 rounding (measured: <= 6e-6 absolute on
# weights of magnitude ~3e-3 after 3 AdamW steps); 1e-4 leaves room and still catches a wrong shard,
# a missing gradient average or a mis-weighted loss (those move weights by ~lr = 1e-3 per step).
ATOL = 1e-4


# FSDP vs 1 process: the same float32 reordering as above, plus FSDP's reduce-scatter summing the two
# ranks' gradients in its own order (measured: <= 5.1e-6 absolute on the same weights); the same bound.
FSDP_ATOL = 1e-4


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    )


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 - safe_open has no __iter__


def _launch_worker(out: Path, *flags: str) -> Path:
    """Run the worker on 2 CPU processes (gloo) with 2 items per rank; return its output folder."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += [str(HERE / "_distributed_worker.py"), "--out", str(out), "--steps", "3", "--batch", "2"]
    result = subprocess.run(command + list(flags), env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Path:
    return _launch_worker(tmp_path_factory.mktemp("two-process"))


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory) -> Path:
    return _launch_worker(tmp_path_factory.mktemp("fsdp"), "--fsdp")


def _fsdp_model(text_tokenizer) -> JanusAdapter:
    """The FSDP runs' tiny Janus: its language model has FSDP_LAYERS decoder layers."""
    return JanusAdapter(
        build_tiny_janus(dataclasses.replace(SMALL, text_layers=FSDP_LAYERS), seed=0), text_tokenizer
    )


@pytest.mark.parametrize("mode", ["sft", "sft-extra", "unigame", "simultaneous"])
def test_two_processes_equal_one_process_with_the_same_global_batch(
    two_process_runs, tmp_path, make_janus, records, mode
):
    cfg = {  # 4 = 2 ranks x 2 items, 2 = 2 ranks x 1 extra clean item
        "sft": config(3, 4, enabled=False),
        "sft-extra": config(3, 4, extra=2, enabled=False),
        "unigame": config(3, 4, **UNIGAME),
        "simultaneous": config(3, 4, **SIMULTANEOUS),
    }[mode]
    one = UniGameTrainer(cfg, tmp_path / mode, make_janus(), None, records)
    one.setup()
    before = one.trainable_state()
    one.train()
    one.cleanup()
    expected = one.trainable_state()
    got, meta = _load(two_process_runs / f"{mode}.safetensors")
    assert meta["world_size"] == "2"

    weights = {k: v for k, v in got.items() if not k.startswith("buffer.")}
    assert weights.keys() == expected.keys()
    assert any(not torch.equal(before[k], expected[k]) for k in expected if "lora_B" in k)  # it trained
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=ATOL, msg=name)
    if mode == "unigame":  # one global τ and a replicated buffer: the same items, hardness within rounding
        assert json.loads(meta["buffer.ids"]) == one.buffer.ids and len(one.buffer) == 6
        torch.testing.assert_close(got["buffer.hardness"], one.buffer.hardness, rtol=1e-4, atol=0)

    # Rank 0's log holds the mean over ranks, which is the one-process step's value.
    two, single = (
        read_metrics(two_process_runs / mode / "metrics.csv"),
        read_metrics(tmp_path / mode / "metrics.csv"),
    )
    assert two["step"].tolist() == [1, 2, 3]
    columns = ["loss_understand", "ce_clean"] + {
        "sft": [],
        "sft-extra": ["ce_extra"],
        "unigame": ["ce_hard", "ce_adv", "tau", "buffer_size", "mined", "attack_success_rate", "eps"]
        # each rank judges its own candidates; the counts are of the global batch
        + ["label_valid_mined", "label_valid_inserted", "label_valid_rejected"],
        "simultaneous": ["ce_hard", "ce_adv", "tau", "mined", "eps"],
    }[mode]
    for column in columns:
        np.testing.assert_allclose(two[column], single[column], rtol=1e-4, equal_nan=True, err_msg=column)
    if mode == "unigame":
        assert json.loads((two_process_runs / mode / "label_validity.json").read_text()) == json.loads(
            (tmp_path / mode / "label_validity.json").read_text()
        )


def test_two_process_run_resumes_exactly(two_process_runs):
    """Interrupted after step 1 and resumed = uninterrupted, bitwise, with dropout on (every rank's own
    random stream is in rank 0's checkpoint)."""
    whole, _ = _load(two_process_runs / "whole.safetensors")
    resumed, _ = _load(two_process_runs / "resumed.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name
    assert read_metrics(two_process_runs / "split" / "metrics.csv")["step"].tolist() == [1, 2, 3]


def test_fsdp_two_processes_equal_one_process_with_the_same_global_batch(
    fsdp_runs, tmp_path, text_tokenizer, records
):
    """FSDP2 over the language model's decoder layers (2 gloo processes, 2 items each) = 1 process at batch
    4: LoRA and perturber weights, the buffer, and the checkpoint (whole LoRA + optimiser state on disk)."""
    one = UniGameTrainer(
        config(3, 4, **UNIGAME), tmp_path / "one", _fsdp_model(text_tokenizer), None, records
    )
    one.setup()
    before = one.trainable_state()
    one.train()
    one_checkpoint = one.save_checkpoint()
    one.cleanup()
    expected = one.trainable_state()
    got, meta = _load(fsdp_runs / "unigame.safetensors")
    assert meta["world_size"] == "2"

    # What was sharded: every parameter of the decoder layers (frozen and LoRA) and the final norm;
    # not the embeddings, the vision tower, the VQ, the heads, or the perturber.
    layer_params = {n for n, _ in one.peft_model.named_parameters() if ".language_model.layers." in n}
    assert set(json.loads(meta["sharded"])) == layer_params | {
        "base_model.model.model.language_model.norm.weight"
    }
    assert {n.split(".layers.")[1].split(".")[0] for n in layer_params} == {"0", "1"}  # FSDP_LAYERS layers

    weights = {k: v for k, v in got.items() if not k.startswith("buffer.")}
    assert weights.keys() == expected.keys()
    assert any(not torch.equal(before[k], expected[k]) for k in expected if "lora_B" in k)  # it trained
    assert any(not torch.equal(before[k], expected[k]) for k in expected if k.startswith("perturber."))
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=FSDP_ATOL, msg=name)
    assert json.loads(meta["buffer.ids"]) == one.buffer.ids
    torch.testing.assert_close(got["buffer.hardness"], one.buffer.hardness, rtol=1e-4, atol=0)

    # The checkpoint has the one-process format and values: whole LoRA tensors in the peft adapter,
    # whole AdamW moments under the same keys, gathered from the shards.
    fsdp_checkpoint = fsdp_runs / "unigame" / "checkpoints" / one_checkpoint.name
    for relative in ("lora/adapter_model.safetensors", "state.safetensors"):
        single, sharded = (
            load_file(str(one_checkpoint / relative)),
            load_file(str(fsdp_checkpoint / relative)),
        )
        assert single.keys() == {k for k in sharded if not k.startswith("rank1.")}, relative  # + rank 1's RNG
        for key, value in single.items():
            if key.startswith(("rng.", "generator.")):
                continue  # random states
            assert sharded[key].shape == value.shape, key
            # Within 0.1% of the tensor's largest entry (measured: <= 1e-4 for LoRA, 8e-6 for AdamW
            # moments, whose scale ranges from 1e-2 down to 1e-5); a missing or misplaced shard is ~100%.
            scale = float(value.abs().max()) if value.is_floating_point() else 0.0
            torch.testing.assert_close(sharded[key], value, rtol=0, atol=1e-3 * scale, msg=key)
    assert json.loads((fsdp_checkpoint / "state.json").read_text())["world_size"] == 2


def test_fsdp_run_resumes_exactly(fsdp_runs):
    """An FSDP run interrupted after step 1 and resumed from its checkpoint (whole weights re-sharded on
    load) = the uninterrupted FSDP run, bitwise, with dropout on."""
    whole, _ = _load(fsdp_runs / "whole.safetensors")
    resumed, _ = _load(fsdp_runs / "resumed.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_fsdp_checkpoint_resumes_in_one_process(fsdp_runs, tmp_path, text_tokenizer, records):
    """The FSDP checkpoint is an ordinary one: a one-process run resumes from it with its weights."""
    checkpoint = fsdp_runs / "unigame" / "checkpoints" / "step-00000003"
    saved = load_file(str(checkpoint / "lora" / "adapter_model.safetensors"))
    cfg = config(4, 4, **UNIGAME)
    trainer = UniGameTrainer(cfg, tmp_path / "resumed", _fsdp_model(text_tokenizer), None, records)
    with warnings.catch_warnings(record=True) as caught:  # also the config difference (steps, batch)
        warnings.simplefilter("always")
        trainer.setup(resume=checkpoint)
    assert any("2-process checkpoint with 1 processes" in str(w.message) for w in caught)
    assert trainer.step == 3
    state = trainer.trainable_state()
    for key, value in saved.items():  # peft drops the adapter name ("default") on disk
        assert torch.equal(state["lora." + key.replace(".weight", ".default.weight")], value), key
    trainer.train()
    assert trainer.step == 4
    trainer.cleanup()


def test_accelerate_launch_runs_the_cli_on_two_processes(janus_dir, tmp_path):  # noqa: F811
    """The documented command: `accelerate launch --multi_gpu -m unigame train` (gloo on CPU here)."""
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    launch += [
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    launch += ["--main_process_port", str(port), "-m", "unigame", "train", "--cfg.model.path", str(janus_dir)]
    launch += ["--cfg.data.train_items", "16", "--cfg.data.batch_size", "2", "--cfg.optim.steps", "2"]
    launch += ["--cfg.game.clip_calibration", "absolute", "--cfg.game.clip_threshold", "-1"]
    launch += ["--cfg.logging.log_every", "1", "--cfg.logging.progress", "false", "--output", str(run)]
    result = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("final checkpoint") == 1  # rank 0 reports
    assert read_metrics(run / "metrics.csv")["step"].tolist() == [1, 2]
    state = json.loads((run / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["world_size"] == 2 and state["data"]["cursor"] == 8  # 2 steps x global batch 2 x 2
    assert (run / "checkpoints" / "step-00000002" / "lora" / "adapter_model.safetensors").is_file()


def test_shipped_accelerate_configs_load_and_select_ddp_or_fsdp():
    from accelerate.commands.config.config_args import ClusterConfig

    configs = sorted((HERE.parents[1] / "configs" / "accelerate").rglob("*.yaml"))
    assert {p.name for p in configs} >= {"ddp.yaml", "fsdp.yaml"}
    for path in configs:
        config = ClusterConfig.from_yaml_file(str(path))
        kind = "FSDP" if path.stem == "fsdp" else "MULTI_GPU"
        assert str(config.distributed_type).endswith(kind), path
        assert config.mixed_precision == "bf16", path  # matches the Janus-Pro recipes' model.precision


def test_shards_concatenate_to_the_global_batch():
    for n, world in [(8, 2), (7, 3), (2, 4)]:
        parts = [list(range(n))[shard_slice(n, r, world)] for r in range(world)]
        assert sum(parts, []) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    records = build_split("train", 12, 0)
    full = RecordBatches(records, 4, seed=3)
    ranks = [RecordBatches(records, 4, seed=3, shard=lambda n, r=r: shard_slice(n, r, 2)) for r in range(2)]
    for _ in range(5):  # across an epoch boundary too
        assert next(full).ids == next(ranks[0]).ids + next(ranks[1]).ids


def test_one_process_without_a_launcher_is_the_plain_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = Distributed.from_environment("cpu")
    assert (dist.rank, dist.world_size, dist.device, dist.is_main) == (0, 1, torch.device("cpu"), True)
    grad = torch.ones(3)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad
    dist.average_gradients([param])
    assert param.grad is grad  # untouched
    assert dist.mean_metrics({"a": 1.0}, ["a", "b"]) == {"a": 1.0}


def test_launcher_errors_name_the_fix(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="model.device='cuda:1'.*set model.device cuda"):
        Distributed.from_environment("cuda:1")


def test_fsdp_in_one_process_shards_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    dist = Distributed.from_environment("cpu")
    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2)]))
    assert dist.shard_language_model(model) == []
    assert not any(is_sharded(p) for p in model.parameters())


def test_fsdp_refuses_lora_outside_the_layer_list():
    dist = Distributed("cpu", rank=0, world_size=2)
    dist.fsdp = True
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    model.head = torch.nn.Linear(2, 2)  # trainable, outside the layers: refused before any collective
    with pytest.raises(
        ValueError, match=r"layers of layers.*\['head.weight', 'head.bias'\] outside them.*ddp.yaml"
    ):
        dist.shard_language_model(model)


def test_fsdp_settings_unigame_does_not_apply_are_named(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.warns(UserWarning, match="fsdp_version.*fsdp_offload_params.*configs/accelerate/fsdp.yaml"):
        _warn_ignored_fsdp_settings()
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_ignored_fsdp_settings()
