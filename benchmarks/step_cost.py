"""Step cost of UniGame's schedules vs the SFT baseline, measured side by side in one run.

Step kinds on the same model, batch and data, interleaved round by round, timed in CPU time of the
process (one torch thread: the step's own work; wall time, which a shared machine's other jobs
inflate unevenly, is shown beside it), each round's ratio to that round's SFT step, the median over
rounds (`--modes`, default all):

* `sft`                   — the SFT baseline's step (clean CE, LoRA update);
* `alternating`           — UniGame as the tiny recipe runs it (paper Algorithm 1): decoder
  adversary with residual decoding, mining every step (CLIP filter, buffer, replay);
* `simultaneous`          — the same with `game.schedule: simultaneous` (one forward/backward);
* `alternating-nobuffer`, `simultaneous-nobuffer` — both schedules with `game.buffer: false`: the
  hard items are this step's selected candidates (where the joint step saves the most);
* `alternating-images`, `simultaneous-images` — both schedules with `game.replay_images: true`: the
  buffer keeps x̃ and replay decodes nothing;
* `official`              — official-code style: token-space adversary and mining by text-to-image
  generation from the question with δ injected at every autoregressive step, every step.

Models (random weights; timing does not depend on training):

* `tiny`       — the tiny Janus (`TinyJanusConfig()` defaults: the default base's dimensions);
* `lm-heavy`   — the tiny VQ and vision encoder with a language model 512 wide and 8 deep (the
  tiny one: 128 x 3), so the language model is nearly all of an SFT step and the decoder a small
  part of a UniGame one: the ratio a Janus-Pro user pays, on a CPU;
* `janus-1b`   — Janus-Pro-1B dimensions: Llama hidden 2048, 24 layers, 16 heads, MLP 5632, vocab
  102400; SigLIP-L vision 1024 x 24 at 384 px, patch 16; VQ at 384 px with 16x downsampling (576
  codes). `--layers N` cuts both the language model and the vision tower to N layers.

Also reported: buffer memory per entry (a stored latent vs a decoded float32 image), scaling with
batch size (`--batch 4,16,64`: one interleaved measurement per batch size), and with `--memory`
the peak memory of each step kind: on CUDA `torch.cuda.max_memory_allocated` in this process; on
CPU the peak resident memory sampled during the steps (every millisecond) above the resident
memory before them, in a fresh subprocess per (mode, batch) after one warm-up step, so neither
set-up nor another mode's allocations count.

`--profile` times where a step goes instead, in the main thread's CPU time (decoder, encoders,
language model forward and backward, filter, label judge, buffer, optimisers, by phase), for each
mode, by wrapping the
adapter's and the trainer's parts with timers; a backward is split where its gradient reaches the
understanding tokens, the decoded pixels and the latents. `--trace DIR` also writes a
torch.profiler trace of the profiled steps, each part a `record_function` range.

    python benchmarks/step_cost.py --model tiny --steps 10
    python benchmarks/step_cost.py --model lm-heavy --batch 4,16,64 --memory
    python benchmarks/step_cost.py --model tiny --profile --modes sft,alternating,simultaneous
    python benchmarks/step_cost.py --model janus-1b --layers 1 --steps 1 --modes sft,alternating
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

# mode -> (label, GameConfig overrides); the UniGame modes run the tiny recipe's game defaults.
MODES: dict[str, tuple[str, dict[str, object]]] = {
    "sft": ("SFT (clean CE, LoRA update)", {"enabled": False}),
    "alternating": ("UniGame, alternating (paper)", {}),
    "simultaneous": ("UniGame, simultaneous", {"schedule": "simultaneous"}),
    "alternating-nobuffer": ("UniGame, alternating, buffer off", {"buffer": False}),
    "simultaneous-nobuffer": (
        "UniGame, simultaneous, buffer off",
        {"schedule": "simultaneous", "buffer": False},
    ),
    "alternating-images": ("UniGame, alternating, buffer keeps x̃", {"replay_images": True}),
    "simultaneous-images": (
        "UniGame, simultaneous, buffer keeps x̃",
        {"schedule": "simultaneous", "replay_images": True},
    ),
    "official": (
        "official-style: token adversary + T2I mining",
        {"adversary": "embedding", "mining": "official"},
    ),
}
# The language model of `--model lm-heavy`: the tiny Janus's VQ and vision encoder, a wider, deeper LM.
LM_HEAVY = {"text_hidden": 512, "text_layers": 8, "text_heads": 8}


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

    if name in ("tiny", "lm-heavy"):
        cfg = TinyJanusConfig(**(LM_HEAVY if name == "lm-heavy" else {}))
        if layers is not None:
            cfg.text_layers = cfg.vision_layers = layers
        model = build_tiny_janus(cfg, seed=0)
        what = (
            f"{'tiny Janus' if name == 'tiny' else 'lm-heavy (tiny VQ and ViT)'}: Llama {cfg.text_layers}x"
            f"{cfg.text_hidden}, ViT {cfg.vision_layers}x{cfg.vision_hidden} at {cfg.image_size} px "
            f"({cfg.num_understanding_tokens} tokens), VQ {cfg.num_image_tokens} codes"
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
    raise ValueError(f"--model {name!r}: allowed tiny, lm-heavy, janus-1b")


def _scorer(tokenizer: PreTrainedTokenizerBase) -> ClipScorer:
    """A random tiny CLIP (timing only); a real CLIP-L would cost more at 384 px."""
    from transformers import CLIPModel

    from unigame.pretrain.clip import clip_tokenizer, scorer_from_model, tiny_clip_config

    torch.manual_seed(0)
    return scorer_from_model(
        CLIPModel(tiny_clip_config(len(clip_tokenizer(tokenizer)), 32)).eval(), tokenizer
    )


def _config(mode: str, batch: int, image_size: int) -> TrainConfig:
    game = GameConfig(mine_every=1, **MODES[mode][1])
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
    times: dict[str, list[float]] = {m: [] for m in modes}  # CPU seconds of this process per step
    walls: dict[str, list[float]] = {m: [] for m in modes}
    for round_ in range(warmup + steps):  # step 0 measures the attack success rate: always warm-up
        for mode, trainer in trainers.items():
            start, cpu = time.perf_counter(), time.process_time()
            trainer.train(until_step=trainer.step + 1)
            elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu
            if round_ >= warmup:
                times[mode].append(cpu_elapsed)
                walls[mode].append(elapsed)
            print(
                f"[step_cost] batch {batch} round {round_} {mode}: {cpu_elapsed:.2f} s CPU, {elapsed:.2f} s wall",
                file=sys.stderr,
                flush=True,
            )
    adapter = next(iter(trainers.values())).adapter
    probe = trainers[modes[0]].batches.batch([0]).pixels
    with torch.no_grad():
        latent = adapter.encode_latents(probe)[0].float()  # (N, D)
    latent_bytes = latent.numel() * 4
    buffers = [t.buffer for t in trainers.values() if t.buffer is not None and len(t.buffer)]
    if (
        buffers and trainers[modes[0]].adapter is not None
    ):  # what a buffer entry holds: z̃, and z when residual
        latent_bytes = buffers[0].memory_bytes() // len(buffers[0])
    image_bytes = probe[0].numel() * 4
    for trainer in trainers.values():
        trainer.cleanup()
    return {
        "what": what,
        "seconds": {m: statistics.median(t) for m, t in times.items()},
        "wall": {m: statistics.median(t) for m, t in walls.items()},
        # each round's ratio to that round's SFT step, then the median: load that drifts between
        # rounds cancels out
        "ratio": {m: statistics.median(t / s for t, s in zip(times[m], times["sft"])) for m in modes},
        "latent_bytes": latent_bytes,
        "image_bytes": image_bytes,
    }


# ------------------------------------------------------------------------------------------ profile
# The main thread's CPU time: with one torch thread the forward, the backward and the optimiser all
# run on it, and CPU time, unlike wall time, does not count the time a shared machine's other jobs
# hold the core.
_clock = time.thread_time


class _Breakdown:
    """Exclusive wall time per (phase, part) of instrumented calls, plus the backward split.

    A part's time excludes the instrumented parts called inside it; the phase is the innermost
    instrumented trainer method running (challenge, mine, understand, joint, attack success)."""

    BACKWARD = {
        "tokens": "LM backward",
        "pixels": "vision encoder backward",
        "latents": "VQ decoder backward",
    }

    def __init__(self, trace: bool) -> None:
        self.seconds: dict[tuple[str, str], float] = {}
        self.phase = "step"
        self._stack: list[list[float]] = []  # per open part: [seconds spent in instrumented children]
        self._marks: list[tuple[str, float]] | None = None  # gradient arrivals during a backward
        self._trace = trace

    def _add(self, part: str, seconds: float) -> None:
        key = (self.phase, part)
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def part(self, label: str, fn, marks: tuple[str | None, str | None] = (None, None)):  # noqa: ANN001, ANN201
        """`fn` timed as `label`; `marks`: names of the gradient arrivals at its (first input, output)."""
        mark_in, mark_out = marks

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if mark_in and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                args[0].register_hook(self._mark(mark_in))
            start = _clock()
            self._stack.append([0.0])
            try:
                with torch.profiler.record_function(label) if self._trace else _nothing():
                    out = fn(*args, **kwargs)
            finally:
                elapsed = _clock() - start
                (children,) = self._stack.pop()
                self._add(label, elapsed - children)
                if self._stack:
                    self._stack[-1][0] += elapsed
            if mark_out and isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(self._mark(mark_out))
            return out

        return timed

    def phased(self, phase: str, fn):  # noqa: ANN001, ANN201
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            outer, self.phase = self.phase, phase
            try:
                with torch.profiler.record_function(phase) if self._trace else _nothing():
                    return fn(*args, **kwargs)
            finally:
                self.phase = outer

        return run

    def _mark(self, name: str):  # noqa: ANN202
        def hook(grad: torch.Tensor) -> None:
            if self._marks is not None:
                self._marks.append((name, _clock()))

        return hook

    def backward(self, original):  # noqa: ANN001, ANN201
        """`Tensor.backward`, split at the gradient's arrival at tokens, pixels and latents (a CPU
        backward runs in order: the language model, then the vision encoder, the decoder, δ)."""

        def run(tensor, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            self._marks = []
            start = _clock()
            try:
                original(tensor, *args, **kwargs)
            finally:
                end = _clock()
                marks, self._marks = sorted(self._marks, key=lambda m: m[1]), None
                t = start
                for name, when in marks:
                    self._add(self.BACKWARD[name], when - t)
                    t = when
                self._add("perturber backward" if marks else "LM backward", end - t)
                if self._stack:
                    self._stack[-1][0] += end - start

        return run


class _nothing:  # noqa: N801 - a stand-in context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _instrument(trainer: UniGameTrainer, breakdown: _Breakdown) -> None:
    """Wrap the adapter's and the trainer's parts with `breakdown`'s timers (instance attributes)."""
    adapter = trainer.adapter
    adapter.encode_latents = breakdown.part("VQ encoder", adapter.encode_latents)
    adapter.decode_latents = breakdown.part("VQ decoder", adapter.decode_latents, ("latents", "pixels"))
    adapter.visual_tokens = breakdown.part("vision encoder", adapter.visual_tokens, (None, "tokens"))
    adapter.understanding_loss_from_tokens = breakdown.part(
        "LM forward", adapter.understanding_loss_from_tokens
    )
    adapter.answer = breakdown.part("greedy answers", adapter.answer)
    if getattr(adapter, "generate_latents", None) is not None:
        adapter.generate_latents = breakdown.part("text-to-image generation", adapter.generate_latents)
    trainer.opt_understand.step = breakdown.part("optimiser", trainer.opt_understand.step)
    trainer.understand_step = breakdown.phased("understand", trainer.understand_step)
    if not trainer.cfg.game.enabled:
        return
    trainer.perturber.forward = breakdown.part("perturber", trainer.perturber.forward)
    trainer.opt_challenger.step = breakdown.part("optimiser", trainer.opt_challenger.step)
    trainer.filter = breakdown.part("filter", trainer.filter)
    trainer._labels_hold = breakdown.part("label judge", trainer._labels_hold)
    if trainer.buffer is not None:
        for name in ("mine", "sample_indices", "gather", "update_hardness"):
            setattr(trainer.buffer, name, breakdown.part("buffer", getattr(trainer.buffer, name)))
    trainer._clean_pixels = breakdown.part("replayed items' clean images", trainer._clean_pixels)
    trainer.challenge_step = breakdown.phased("challenge", trainer.challenge_step)
    trainer.mine = breakdown.phased("mine", trainer.mine)
    trainer.simultaneous_step = breakdown.phased("joint", trainer.simultaneous_step)
    trainer.attack_success_rate = breakdown.phased("attack success", trainer.attack_success_rate)


def profile(
    name: str, layers: int | None, modes: list[str], batch: int, steps: int, warmup: int, trace: Path | None
) -> dict:
    """Per mode: mean seconds per step of each (phase, part), the step's total, and the attack success
    rate's cost per logged step (measured on every profiled step here; runs log it every
    logging.log_every steps)."""
    from unigame.data.splits import build_split

    tokenizer = _tokenizer()
    records = build_split("train", max(64, batch), 0)
    tmp = Path(tempfile.mkdtemp(prefix="step_cost-profile-"))
    results: dict[str, dict] = {}
    what = ""
    original_backward = torch.Tensor.backward
    for mode in modes:
        adapter, what, image_size = build_model(name, layers, tokenizer)
        cfg = _config(mode, batch, image_size)
        cfg.logging.log_every = 1  # the attack success rate on every step, timed as its own phase
        trainer = UniGameTrainer(cfg, tmp / mode, adapter, _scorer(tokenizer), records)
        trainer.setup()
        trainer.train(until_step=warmup)
        breakdown = _Breakdown(trace is not None)
        _instrument(trainer, breakdown)
        torch.Tensor.backward = breakdown.backward(original_backward)
        totals = []
        activities = [torch.profiler.ProfilerActivity.CPU]
        context = torch.profiler.profile(activities=activities) if trace is not None else _nothing()
        try:
            with context as torch_profile:
                for _ in range(steps):
                    start = _clock()
                    trainer.train(until_step=trainer.step + 1)
                    totals.append(_clock() - start)
        finally:
            torch.Tensor.backward = original_backward
        if trace is not None:
            trace.mkdir(parents=True, exist_ok=True)
            torch_profile.export_chrome_trace(str(trace / f"{name}-{mode}-batch{batch}.json"))
        trainer.cleanup()
        per_step = {key: value / steps for key, value in breakdown.seconds.items()}
        attack = sum(v for (phase, _), v in per_step.items() if phase == "attack success")
        total = sum(totals) / steps - attack
        parts = {key: value for key, value in per_step.items() if key[0] != "attack success"}
        parts[("step", "other (batches, packing, Python)")] = total - sum(parts.values())
        results[mode] = {"total": total, "parts": parts, "attack_success": attack}
        print(f"[step_cost] profiled {mode}: {1000 * total:.0f} ms / step", file=sys.stderr, flush=True)
    return {"what": what, "modes": results}


def _print_profile(result: dict, batch: int, steps: int) -> None:
    modes = list(result["modes"])
    keys = sorted(
        {k for r in result["modes"].values() for k in r["parts"]},
        key=lambda k: -max(r["parts"].get(k, 0.0) for r in result["modes"].values()),
    )
    print(
        f"\nProfile, batch {batch}, {result['what']}; mean of {steps} steps, main-thread CPU ms per step "
        "(share of the step).\n"
    )
    print("| phase | part | " + " | ".join(modes) + " |")
    print("|---|---|" + "---:|" * len(modes))
    for key in keys:
        cells = []
        for mode in modes:
            r = result["modes"][mode]
            value = r["parts"].get(key)
            cells.append("" if value is None else f"{1000 * value:.1f} ({100 * value / r['total']:.0f}%)")
        print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    print(
        "| | **step** | " + " | ".join(f"**{1000 * result['modes'][m]['total']:.1f}**" for m in modes) + " |"
    )
    print(
        "| log steps | attack success rate (greedy answers on x and x̃) | "
        + " | ".join(f"{1000 * result['modes'][m]['attack_success']:.1f}" for m in modes)
        + " |"
    )


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
    parser.add_argument("--model", default="tiny", choices=["tiny", "lm-heavy", "janus-1b"])
    parser.add_argument("--layers", type=int, default=None, help="cut LM and vision depth (quick CPU check)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument(
        "--batch",
        default=None,
        help="batch size(s), comma list for scaling; default: 16 (tiny, lm-heavy), 1 (janus-1b)",
    )
    parser.add_argument("--memory", action="store_true", help="also measure each mode's peak memory")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)  # internal: one mode
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode (>= 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--profile", action="store_true", help="where each mode's step goes, instead of ratios"
    )
    parser.add_argument("--trace", type=Path, default=None, help="with --profile: torch.profiler traces here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "sft" not in modes:
        parser.error(f"--modes must include sft and only name {', '.join(MODES)}; got {args.modes!r}")
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in str(args.batch or (1 if args.model == "janus-1b" else 16)).split(",")]
    if args.memory_probe:
        print(json.dumps(memory_probe(args.model, args.layers, args.memory_probe, batches[0], 2)))
        return
    print(f"[step_cost] start: {_load_line()}", file=sys.stderr, flush=True)
    if args.profile:
        for batch in batches:
            result = profile(
                args.model, args.layers, modes, batch, args.steps, max(1, args.warmup), args.trace
            )
            _print_profile(result, batch, args.steps)
        print(f"\n{_machine()}")
        return
    results = {
        b: measure(args.model, args.layers, modes, b, args.steps, max(1, args.warmup)) for b in batches
    }
    memory = {}
    if args.memory:
        memory = {(m, b): _memory_in_subprocess(args, m, b) for b in batches for m in modes}
    first = results[batches[0]]
    print(
        f"\nModel: {first['what']}; {args.steps} timed steps per mode after {args.warmup} warm-up steps, modes "
        "interleaved. CPU ms: the process's CPU time per step, median (what a shared machine's other jobs do "
        "not inflate); ratio: median over rounds of the step's CPU time over that round's SFT step's; wall ms: "
        "median wall time, for reference."
    )
    print(f"{_machine()}\n")
    mem_header = " | step peak memory (MiB)" if memory else ""
    print("| batch | step | CPU ms / step | ratio to SFT | wall ms / step" + mem_header + " |")
    print("|---:|---|---:|---:|---:|" + ("---:|" if memory else ""))
    for batch, result in results.items():
        for mode in modes:
            row = (
                f"| {batch} | {MODES[mode][0]} | {1000 * result['seconds'][mode]:.1f} | {result['ratio'][mode]:.2f}x"
                f" | {1000 * result['wall'][mode]:.0f}"
            )
            if memory:
                probe = memory[(mode, batch)]
                row += f" | {(probe['peak'] - probe['setup']) / 2**20:.0f}"
            print(row + " |")
    ratio = first["image_bytes"] / first["latent_bytes"]
    print(
        f"\nBuffer memory per entry: stored latents {first['latent_bytes']} B vs decoded float32 image "
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


def _load_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"


def _machine() -> str:
    return (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} on {torch.get_num_threads()} thread(s); at the end: {_load_line()}."
    )


if __name__ == "__main__":
    main()
