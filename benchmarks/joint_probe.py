"""More joint (understanding + text-to-image) training from a base, with the joint stage's options.

Continues a base's joint stage (`unigame.pretrain.janus.train_janus`: warm-up, cosine decay, the
VQ and a pretrained vision encoder frozen) for a number of steps, then reports what the base
check reports: clean VQA on 300 questions and single-object generations judged exactly (100
prompts). Comparing runs that differ in one option shows what that option is worth for both
branches at once, which a generation-only continuation cannot (it erases understanding).

    python benchmarks/joint_probe.py --model ~/.cache/unigame/tiny-janus-<fingerprint> \\
        --steps 1000 --generation-lr 3e-3 --generation-max-objects 2
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    import torch

    from unigame.data.shapes import ShapesConfig
    from unigame.eval.base_eval import clean_vqa_report, generation_report
    from unigame.models.janus import JanusAdapter
    from unigame.pretrain.janus import UnderstandingMix, train_janus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a tiny Janus base directory (`unigame base`)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the language model")
    parser.add_argument(
        "--generation-lr", type=float, default=None, help="generation modules (default: --lr)"
    )
    parser.add_argument("--generation-max-objects", type=int, default=None)
    parser.add_argument("--generation-weight", type=float, default=1.0)
    parser.add_argument("--caption-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", default=None, help="save the continued model here (loadable like a base)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    adapter = JanusAdapter.from_pretrained(args.model)
    config = ShapesConfig()

    def report() -> tuple[float, float]:
        clean = clean_vqa_report(adapter, config)["accuracy"]
        return clean, generation_report(adapter, config, 100, seed=1)["single_object"]

    clean_before, gen_before = report()
    start = time.perf_counter()
    stats = train_janus(
        adapter,
        config,
        args.steps,
        batch_size=args.batch,
        lr=args.lr,
        mix=UnderstandingMix(caption_fraction=args.caption_fraction),
        generation_weight=args.generation_weight,
        freeze_vision=True,
        generation_lr=args.generation_lr,
        generation_max_objects=args.generation_max_objects,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    clean_after, gen_after = report()
    if args.save:
        adapter.model.save_pretrained(args.save)
        adapter.tokenizer.save_pretrained(args.save)
    print(vars(args))
    print(
        f"trained {seconds:.0f} s; final CE understanding {stats['understanding_ce']:.3f}, "
        f"generation {stats['generation_ce']:.2f}; clean VQA {clean_before:.1%} -> {clean_after:.1%}; "
        f"single-object generations judged correct {gen_before:.0%} -> {gen_after:.0%}"
    )


if __name__ == "__main__":
    main()
