"""Short understanding-only runs of the base recipe, to compare joint-stage settings quickly.

Builds the tiny Janus, optionally pretrains its vision encoder, trains understanding alone (no
text-to-image loss: the comparison is about reading the image) and reports clean VQA accuracy
per question kind on the base's own 300-question check (test split, seed 1).

    python benchmarks/understanding_probe.py --vision-steps 1500 --steps 2200 --batch 16 \\
        --lr 5e-4 --caption-fraction 0.1
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    from unigame.data.shapes import ShapesConfig, corpus_texts
    from unigame.eval.base_eval import clean_vqa_report
    from unigame.models.janus import JanusAdapter
    from unigame.models.text_tokenizer import train_text_tokenizer
    from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus
    from unigame.pretrain.janus import UnderstandingMix, train_janus
    from unigame.pretrain.vision import train_vision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision-steps", type=int, default=1500, help="0: no vision pretraining")
    parser.add_argument("--train-vision", action="store_true", help="do not freeze the vision encoder")
    parser.add_argument("--steps", type=int, default=2200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--caption-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    shapes, model_config = ShapesConfig(), TinyJanusConfig()
    tokenizer = train_text_tokenizer(corpus_texts(4000, args.seed, shapes), model_config.vocab_size)
    adapter = JanusAdapter(build_tiny_janus(model_config, seed=args.seed), tokenizer)
    start = time.perf_counter()
    if args.vision_steps:
        train_vision(adapter, shapes, args.vision_steps, seed=args.seed, progress=False)
    train_janus(
        adapter,
        shapes,
        args.steps,
        args.batch,
        args.lr,
        UnderstandingMix(caption_fraction=args.caption_fraction),
        generation_weight=0.0,
        freeze_vision=bool(args.vision_steps) and not args.train_vision,
        seed=args.seed,
        progress=False,
    )
    seconds = time.perf_counter() - start
    report = clean_vqa_report(adapter, shapes)
    kinds = ", ".join(f"{k} {v:.0%}" for k, v in sorted(report["per_kind"].items()))
    print(f"{vars(args)}\ntrained in {seconds:.0f} s; clean VQA {report['accuracy']:.1%} ({kinds})")


if __name__ == "__main__":
    main()
