"""Step cost of UniGame vs the SFT baseline, measured side by side in one run (target: <= 2.5x).

Three step kinds on the same model, batch and data, interleaved round by round so that load on a
shared machine hits all of them alike:

* `sft`      — the SFT baseline's step (clean CE, LoRA update);
* `unigame`  — UniGame, decoder adversary (paper Eq. 7), mining every step (CLIP filter, buffer);
* `official` — official-code style: token-space adversary and mining by text-to-image generation
  from the question with δ injected at every autoregressive step, every step.

Models (random weights; timing does not depend on training):

* `tiny`       — the tiny Janus (`TinyJanusConfig()` defaults, the embedded demo model);
* `janus-1b`   — Janus-Pro-1B dimensions, where the language model dominates: Llama hidden 2048,
  24 layers, 16 heads, MLP 5632, vocab 102400; SigLIP-L vision 1024 x 24 at 384 px, patch 16;
  VQ at 384 px with 16x downsampling (576 codes). `--layers N` cuts both the language model and
  the vision tower to N layers for a quick CPU check; the table says what ran.

Also reported: buffer memory per entry (a stored latent vs a decoded float32 image), scaling with
batch size (`--batch 4,16,64`: one interleaved measurement per batch size), and with `--memory`
the peak memory of each step kind: on CUDA `torch.cuda.max_memory_allocated` in this process; on
CPU the peak resident memory sampled during the steps (every millisecond) above the resident
memory before them, in a fresh subprocess per (mode, batch) after one warm-up step, so neither
set-up nor another mode's allocations count.

    python benchmarks/step_cost.py --model tiny --steps 10
    python benchmarks/step_cost.py --model tiny --batch 4,16,64 --memory
    python benchmarks/step_cost.py --model janus-1b --layers 1 --steps 1 --modes sft,unigame
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.config import DataConfig, GameConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from unigame.models.clip import ClipScorer
    from unigame.models.janus import JanusAdapter

MODES = ("sft", "unigame", "official")


def _tokenizer() -> PreTrainedTokenizerBase:
    from unigame.data.shapes import corpus_texts
    from unigame.models.text_tokenizer import train_text_tokenizer

    return train_text_tokenizer(corpus_texts(2000, 0), vocab_size=512)


def build_model(
    name: str, layers: int | None, tokenizer: PreTrainedTokenizerBase
) -> tuple[JanusAdapter, str, int]:
    """(adapter, description of what was built, image size) for a random-weight model of that size."""
    from unigame.models.janus import JanusAdapter
    from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus

    if name == "tiny":
        cfg = TinyJanusConfig()
        if layers is not None:
            cfg.text_layers = cfg.vision_layers = layers
        model = build_tiny_janus(cfg, seed=0)
        what = (
            f"tiny Janus: Llama {cfg.text_layers}x{cfg.text_hidden}, ViT {cfg.vision_layers}x{cfg.vision_hidden} "
            f"at {cfg.image_size} px ({cfg.num_understanding_tokens} tokens), VQ {cfg.num_image_tokens} codes"
        )
        return JanusAdapter(model, tokenizer), what, cfg.image_size
    if name == "janus-1b":
        from transformers import JanusConfig, JanusForConditionalGeneration, JanusVisionConfig, LlamaConfig

        text_layers = 24 if layers is None else layers
        vision_layers = 24 if layers is None else layers
        text = LlamaConfig(
            vocab_size=102400,
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=text_layers,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=4096,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        vision = JanusVisionConfig(
            hidden_size=1024,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=384,
            patch_size=16,
            projection_dim=2048,
            num_image_tokens=576,
        )
        config = JanusConfig(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            vq_config={
                "projection_dim": 2048,
                "image_token_embed_dim": 2048,
            },  # HF defaults: 384 px, 16x down
            image_token_id=3,  # our tokenizer's <image_placeholder>
        )
        torch.manual_seed(0)
        model = JanusForConditionalGeneration(config).eval()
        what = (
            f"Janus-Pro-1B dims: Llama {text_layers}x2048 (vocab 102400), SigLIP-L {vision_layers}x1024 at 384 px "
            f"(576 tokens), VQ 384 px -> 576 codes"
            + ("" if layers is None else f" [depth cut to {layers} by --layers]")
        )
        return JanusAdapter(model, tokenizer), what, 384
    raise ValueError(f"--model {name!r}: allowed tiny, janus-1b")


def _scorer(tokenizer: PreTrainedTokenizerBase) -> ClipScorer:
    """A random tiny CLIP (timing only); a real CLIP-L would cost more at 384 px."""
    from transformers import CLIPModel

    from unigame.pretrain.clip import clip_tokenizer, scorer_from_model, tiny_clip_config

    torch.manual_seed(0)
    return scorer_from_model(
        CLIPModel(tiny_clip_config(len(clip_tokenizer(tokenizer)), 32)).eval(), tokenizer
    )


def _config(mode: str, batch: int, image_size: int) -> TrainConfig:
    game = GameConfig(enabled=mode != "sft", mine_every=1)
    if mode == "official":
        game.adversary, game.mining = "embedding", "official"
    return TrainConfig(
        model=ModelConfig(path="unused"),
        data=DataConfig(
            train_items=max(64, batch), batch_size=batch, image_size=None if image_size == 32 else image_size
        ),
        game=game,
        optim=OptimConfig(steps=10**6),
        logging=LoggingConfig(
            log_every=10**9, checkpoint_every=0, tensorboard=False, plots=False, progress=False
        ),
    )


def measure(name: str, layers: int | None, modes: list[str], batch: int, steps: int, warmup: int) -> dict:
    """Median seconds per step of each mode, interleaved; plus buffer bytes per entry."""
    from unigame.data.splits import build_split

    tokenizer = _tokenizer()
    records = build_split("train", max(64, batch), 0)
    trainers: dict[str, UniGameTrainer] = {}
    what = ""
    image_size = 32
    tmp = Path(tempfile.mkdtemp(prefix="step_cost-"))
    for mode in modes:
        adapter, what, image_size = build_model(name, layers, tokenizer)  # a fresh model per mode
        trainer = UniGameTrainer(
            _config(mode, batch, image_size), tmp / mode, adapter, _scorer(tokenizer), records
        )
        trainer.setup()
        trainers[mode] = trainer
        print(f"[step_cost] {mode}: model built and trainer set up", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for round_ in range(warmup + steps):  # step 0 measures the attack success rate: always warm-up
        for mode, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train(until_step=trainer.step + 1)
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[mode].append(elapsed)
            print(f"[step_cost] round {round_} {mode}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    adapter = next(iter(trainers.values())).adapter
    probe = trainers[modes[0]].batches.batch([0]).pixels
    with torch.no_grad():
        latent = adapter.encode_latents(probe)[0].float()  # (N, D)
    latent_bytes = latent.numel() * 4
    image_bytes = probe[0].numel() * 4
    for trainer in trainers.values():
        trainer.cleanup()
    return {
        "what": what,
        "seconds": {m: statistics.median(t) for m, t in times.items()},
        "latent_bytes": latent_bytes,
        "image_bytes": image_bytes,
    }


def _current_rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the high-water mark)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class _RssSampler:
    """Samples resident memory every millisecond in a thread; `peak` is the largest sample."""

    def __enter__(self) -> _RssSampler:
        import threading

        self.peak = _current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _current_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_bytes())


def memory_probe(name: str, layers: int | None, mode: str, batch: int, steps: int) -> dict:
    """Peak memory of `steps` steps of one mode in this (fresh) process, beyond what set-up holds."""
    from unigame.data.splits import build_split

    tokenizer = _tokenizer()
    adapter, _, image_size = build_model(name, layers, tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix="step_cost-mem-"))
    records = build_split("train", max(64, batch), 0)
    trainer = UniGameTrainer(_config(mode, batch, image_size), tmp, adapter, _scorer(tokenizer), records)
    trainer.setup()
    cuda = trainer.device.type == "cuda"
    trainer.train(until_step=1)  # warm-up: lazy initialisation is not the step's memory
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        trainer.train(until_step=1 + steps)
        peak = torch.cuda.max_memory_allocated()
    else:
        before = _current_rss_bytes()
        with _RssSampler() as sampler:
            trainer.train(until_step=1 + steps)
        peak = sampler.peak
    trainer.cleanup()
    return {"mode": mode, "batch": batch, "device": trainer.device.type, "setup": before, "peak": peak}


def _memory_in_subprocess(args: argparse.Namespace, mode: str, batch: int) -> dict:
    command = [sys.executable, __file__, "--model", args.model, "--batch", str(batch), "--threads",
               str(args.threads), "--memory-probe", mode]  # fmt: skip
    if args.layers is not None:
        command += ["--layers", str(args.layers)]
    # Freed blocks go straight back to the OS, so resident memory tracks what the step holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "janus-1b"])
    parser.add_argument("--layers", type=int, default=None, help="cut LM and vision depth (quick CPU check)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument(
        "--batch",
        default=None,
        help="batch size(s), comma list for scaling; default: 16 (tiny), 1 (janus-1b)",
    )
    parser.add_argument("--memory", action="store_true", help="also measure each mode's peak memory")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one mode
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode (>= 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "sft" not in modes:
        parser.error(f"--modes must include sft and only name {', '.join(MODES)}; got {args.modes!r}")
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in str(args.batch or (16 if args.model == "tiny" else 1)).split(",")]
    if args.memory_probe:
        print(json.dumps(memory_probe(args.model, args.layers, args.memory_probe, batches[0], 2)))
        return
    labels = {
        "sft": "SFT (clean CE, LoRA update)",
        "unigame": "UniGame, decoder adversary, mining every step",
        "official": "official-style: token adversary + T2I mining every step",
    }
    results = {
        b: measure(args.model, args.layers, modes, b, args.steps, max(1, args.warmup)) for b in batches
    }
    memory = {}
    if args.memory:
        memory = {(m, b): _memory_in_subprocess(args, m, b) for b in batches for m in modes}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    first = results[batches[0]]
    print(f"\nModel: {first['what']}; {args.steps} timed steps per mode (median), modes interleaved.")
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} on {torch.get_num_threads()} thread(s), load average {load:.2f} at the end.\n"
    )
    mem_header = " | step peak memory (MiB)" if memory else ""
    print("| batch | step | ms / step | ratio to SFT" + mem_header + " |")
    print("|---:|---|---:|---:|" + ("---:|" if memory else ""))
    for batch, result in results.items():
        sft = result["seconds"]["sft"]
        for mode in modes:
            seconds = result["seconds"][mode]
            row = f"| {batch} | {labels[mode]} | {1000 * seconds:.1f} | {seconds / sft:.2f}x"
            if memory:
                probe = memory[(mode, batch)]
                row += f" | {(probe['peak'] - probe['setup']) / 2**20:.0f}"
            print(row + " |")
    ratio = first["image_bytes"] / first["latent_bytes"]
    print(
        f"\nBuffer memory per entry: latent {first['latent_bytes']} B vs decoded float32 image "
        f"{first['image_bytes']} B: {ratio:.1f}x smaller."
    )
    if memory:
        kind = next(iter(memory.values()))["device"]
        how = (
            "torch.cuda.max_memory_allocated above the allocated memory before the steps"
            if kind == "cuda"
            else "peak resident memory sampled every ms above the resident memory before the steps "
            "(glibc told to return freed memory at once)"
        )
        print(f"Peak memory: {how}; fresh process per (mode, batch), 2 steps after 1 warm-up step.")


if __name__ == "__main__":
    main()
