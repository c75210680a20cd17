"""Step cost of UniGame vs the SFT baseline, measured side by side in one run (DESIGN §5: <= 2.5x).

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

Also reported: buffer memory per entry, a stored latent vs a decoded float32 image.

    python benchmarks/step_cost.py --model tiny --steps 10
    python benchmarks/step_cost.py --model janus-1b --layers 1 --steps 1 --modes sft,unigame
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from unigame.game.config import DataConfig, GameConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig
from unigame.game.trainer import UniGameTrainer

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "janus-1b"])
    parser.add_argument("--layers", type=int, default=None, help="cut LM and vision depth (quick CPU check)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--batch", type=int, default=None, help="default: 16 (tiny), 1 (janus-1b)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode (>= 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "sft" not in modes:
        parser.error(f"--modes must include sft and only name {', '.join(MODES)}; got {args.modes!r}")
    torch.set_num_threads(args.threads)
    batch = args.batch or (16 if args.model == "tiny" else 1)
    result = measure(args.model, args.layers, modes, batch, args.steps, max(1, args.warmup))
    sft = result["seconds"]["sft"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nModel: {result['what']}; batch {batch}; {args.steps} timed steps per mode (median), interleaved."
    )
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} on {torch.get_num_threads()} thread(s), load average {load:.2f} at the end.\n"
    )
    print("| step | ms / step | ratio to SFT |")
    print("|---|---:|---:|")
    labels = {
        "sft": "SFT (clean CE, LoRA update)",
        "unigame": "UniGame, decoder adversary, mining every step",
        "official": "official-style: token adversary + T2I mining every step",
    }
    for mode in modes:
        seconds = result["seconds"][mode]
        print(f"| {labels[mode]} | {1000 * seconds:.1f} | {seconds / sft:.2f}x |")
    ratio = result["image_bytes"] / result["latent_bytes"]
    print(
        f"\nBuffer memory per entry: latent {result['latent_bytes']} B vs decoded float32 image "
        f"{result['image_bytes']} B: {ratio:.1f}x smaller."
    )


if __name__ == "__main__":
    main()
