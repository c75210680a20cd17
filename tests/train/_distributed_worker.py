"""One rank of the multi-process trainer test, started by `torchrun` from test_distributed.py.

Runs, in one process group: SFT (also with one extra clean item per rank) and UniGame for `--steps`
steps with `--batch` items per rank, and a UniGame run interrupted after step 1, checkpointed and
resumed. Rank 0 writes the trainable weights
(and the buffer's hardness and ids) of each run to `<out>/<name>.safetensors`.

With `--fsdp` (ACCELERATE_USE_FSDP=true, the model with `FSDP_LAYERS` decoder layers): UniGame and the
interrupted-and-resumed UniGame run only, the language model sharded by FSDP2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from unigame.data.shapes import corpus_texts
from unigame.data.splits import build_split
from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.models.janus import JanusAdapter
from unigame.models.text_tokenizer import train_text_tokenizer
from unigame.models.tiny_janus import build_tiny_janus
from unigame.train.distributed import is_sharded

try:
    from .conftest import SMALL, small_config  # imported by test_distributed.py
except ImportError:
    from conftest import SMALL, small_config  # run by torchrun as a script: its folder is sys.path[0]

# The UniGame settings of the equivalence runs (shared with the one-process side of the test).
UNIGAME = {"filter": "none", "capacity": 6, "percentile": 50.0}
# The joint schedule, with the buffer off: each rank trains on its own rows of the global selection.
SIMULTANEOUS = {**UNIGAME, "schedule": "simultaneous", "buffer": False}
FSDP_LAYERS = 2  # decoder layers of the FSDP runs' model: more than one layer is sharded


def config(steps: int, batch: int, dropout: float = 0.0, extra: int = 0, **game: object):
    cfg = small_config(steps=steps, **game)
    cfg.data.batch_size = batch
    cfg.data.extra_clean_items = extra  # per rank, like the batch
    cfg.model.lora_dropout = dropout  # dropout masks are drawn per rank: 0 makes the runs comparable
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--fsdp", action="store_true")
    args = parser.parse_args()
    if args.fsdp:
        os.environ["ACCELERATE_USE_FSDP"] = "true"  # what `distributed_type: FSDP` sets
    shape = dataclasses.replace(SMALL, text_layers=FSDP_LAYERS) if args.fsdp else SMALL
    torch.set_num_threads(1)
    out = Path(args.out)
    tokenizer = train_text_tokenizer(corpus_texts(200, 0), vocab_size=SMALL.vocab_size)
    records = build_split("train", 32, 0)

    def run(name: str, cfg, until: int | None = None, resume: Path | None = None) -> UniGameTrainer:
        adapter = JanusAdapter(build_tiny_janus(shape, seed=0), tokenizer)
        trainer = UniGameTrainer(cfg, out / name, adapter, None, records)
        trainer.setup(resume=resume)
        trainer.train(until_step=until)
        return trainer

    def save(name: str, trainer: UniGameTrainer) -> None:
        state = trainer.trainable_state()
        meta = {"world_size": str(trainer.dist.world_size)}
        if args.fsdp:  # which parameters FSDP sharded
            named = trainer.peft_model.named_parameters()
            meta["sharded"] = json.dumps(sorted(n for n, p in named if is_sharded(p)))
        if trainer.buffer is not None:  # every rank holds the same buffer; rank 0's is saved
            state["buffer.hardness"] = trainer.buffer.hardness
            meta["buffer.ids"] = json.dumps(trainer.buffer.ids)
        if trainer.dist.is_main:
            tensors = {k: v.contiguous() for k, v in state.items()}
            save_file(tensors, str(out / f"{name}.safetensors"), metadata=meta)
        trainer.cleanup()

    if not args.fsdp:
        save("sft", run("sft", config(args.steps, args.batch, enabled=False)))
        save("sft-extra", run("sft-extra", config(args.steps, args.batch, extra=1, enabled=False)))
        save("simultaneous", run("simultaneous", config(args.steps, args.batch, **SIMULTANEOUS)))
    unigame = run("unigame", config(args.steps, args.batch, **UNIGAME))
    if args.fsdp:
        unigame.save_checkpoint()  # the gathered whole LoRA and optimiser state, compared with one process
    save("unigame", unigame)

    # Multi-process resume, with dropout on so that every rank's own random stream must be restored.
    resumable = config(args.steps, args.batch, dropout=0.2, **UNIGAME)
    save("whole", run("whole", resumable))
    first = run("split", resumable, until=1)
    checkpoint = first.save_checkpoint()
    first.cleanup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same config and process count: no warning
        save("resumed", run("split", resumable, resume=checkpoint))


if __name__ == "__main__":
    main()
