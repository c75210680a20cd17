"""More text-to-image training from a base: how far does the generation branch get, and how fast?

Continues a base's text-to-image loss alone (caption -> VQ codes, 10% of prompts dropped for
classifier-free guidance; the VQ, the vision encoder and its aligner frozen) for a number of steps
on scenes with a chosen object count, then judges single-object generations exactly (the base
check's generation metric, 100 prompts). By default the shared language model trains too, so the
clean VQA printed before and after shows what that costs understanding; `--train
generation-modules` trains only the generation-only modules and leaves understanding as it was.

    python benchmarks/generation_probe.py --model ~/.cache/unigame/tiny-janus-<fingerprint> \\
        --steps 1000 --objects 1 --lr 1e-3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm.auto import tqdm


def main(argv: list[str] | None = None) -> None:
    from unigame.data.pixels import images_to_pixels
    from unigame.data.shapes import ShapesConfig, caption, render, sample_scene
    from unigame.eval.base_eval import clean_vqa_report, generation_report
    from unigame.models.janus import JanusAdapter
    from unigame.pretrain.schedule import cosine_decay

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a tiny Janus base directory (`unigame base`)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--objects", type=int, nargs=2, default=[1, 4], metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--train",
        choices=["all", "generation-modules"],
        default="all",
        help="all: the language model and the generation modules; generation-modules: only the "
        "image-token embeddings, their aligner and the generation head (understanding untouched)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    adapter = JanusAdapter.from_pretrained(args.model)
    model = adapter.model
    before = generation_report(adapter, ShapesConfig(), 100, seed=1)["single_object"]
    clean_before = clean_vqa_report(adapter, ShapesConfig())["accuracy"]
    model.model.vqmodel.requires_grad_(False)
    model.model.vision_model.requires_grad_(False)
    model.model.aligner.requires_grad_(False)
    if args.train == "generation-modules":
        model.model.language_model.requires_grad_(False)
        model.get_input_embeddings().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_decay(s, args.steps))
    train_config = ShapesConfig(min_objects=args.objects[0], max_objects=args.objects[1])
    rng = np.random.default_rng(args.seed)
    model.train()
    start, losses = time.perf_counter(), []
    for _ in tqdm(range(args.steps), desc="generation steps"):
        scenes = [sample_scene(rng, train_config) for _ in range(args.batch)]
        pixels = images_to_pixels([render(s, train_config) for s in scenes])
        loss = adapter.generation_loss(pixels, [caption(s) for s in scenes], drop_prompt=0.1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    seconds = time.perf_counter() - start
    after = generation_report(adapter, ShapesConfig(), 100, seed=1)["single_object"]
    clean_after = clean_vqa_report(adapter, ShapesConfig())["accuracy"]
    print(f"{vars(args)}")
    print(
        f"trained {seconds:.0f} s; generation CE over the last 50 steps {np.mean(losses[-50:]):.2f}; "
        f"single-object generations judged correct: {before:.0%} before, {after:.0%} after; "
        f"clean VQA {clean_before:.1%} before, {clean_after:.1%} after"
    )


if __name__ == "__main__":
    main()
