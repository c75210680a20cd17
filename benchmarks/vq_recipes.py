"""VQ recipes side by side: how well each reconstructs ShapesWorld scenes, judged exactly.

Trains the tiny Janus's VQ alone (stage 2 of `unigame base`) once per recipe, then judges the
reconstructions of 256 one-object and 256 four-object scenes (`judge_scene`, position tolerance 0.1,
size included) and counts the distinct codes at the top-left token (background in almost every
scene) and the entropy of all codes used: a VQ whose background codes vary is harder for the
text-to-image branch to predict.

    python benchmarks/vq_recipes.py --recipes 500x32:1.0 1000x16:1.0 500x32:0.6 1000x16:0.6

A recipe is STEPSxBATCH:RESEED_FRACTION (1.0 = re-seed dead codes throughout at a constant
learning rate, the earlier default; 0.6 = the current one).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def parse_recipe(text: str) -> tuple[int, int, float]:
    try:
        shape, fraction = text.split(":")
        steps, batch = shape.split("x")
        return int(steps), int(batch), float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"recipe {text!r} is not STEPSxBATCH:RESEED_FRACTION") from None


def judge_reconstructions(adapter, objects: int, n: int, rng: np.random.Generator) -> dict[str, float]:
    from unigame.data.pixels import images_to_pixels
    from unigame.data.shapes import ShapesConfig, judge_scene, render, sample_scene

    config = ShapesConfig(min_objects=objects, max_objects=objects)
    scenes = [sample_scene(rng, config) for _ in range(n)]
    pixels = images_to_pixels([render(s, config) for s in scenes])
    with torch.no_grad():
        codes = adapter.quantize(adapter.encode_latents(pixels))
        images = adapter.decode_codes(codes)
    images = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    judged = [judge_scene(im, s, config, pos_tol=0.1).all_correct for im, s in zip(images, scenes)]
    counts = torch.bincount(codes.flatten()).float()
    share = counts[counts > 0] / counts.sum()
    return {
        "judged_correct": float(np.mean(judged)),
        "code_entropy": float(-(share * share.log()).sum()),
        "corner_codes": len(set(codes[:, 0].tolist())),
        "pixel_mae": float(
            (torch.from_numpy(images).float() / 255 - pixels.permute(0, 2, 3, 1)).abs().mean()
        ),
    }


def main(argv: list[str] | None = None) -> None:
    from unigame.data.shapes import ShapesConfig, corpus_texts
    from unigame.models.janus import JanusAdapter
    from unigame.models.text_tokenizer import train_text_tokenizer
    from unigame.models.tiny_janus import TinyJanusConfig, build_tiny_janus
    from unigame.pretrain.vq import train_vq

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", type=parse_recipe, default=[parse_recipe("1000x16:0.6")])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--scenes", type=int, default=256, help="scenes judged per object count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    shapes, model_config = ShapesConfig(), TinyJanusConfig()
    tokenizer = train_text_tokenizer(corpus_texts(4000, args.seed, shapes), model_config.vocab_size)
    print(
        "| recipe | train s | 1 object judged | 4 objects judged | corner codes (1 / 4 objects) "
        "| code entropy, nats (1 / 4) | pixel MAE (1 / 4) |"
    )
    print("|---|---|---|---|---|---|---|")
    for steps, batch, fraction in args.recipes:
        adapter = JanusAdapter(build_tiny_janus(model_config, seed=args.seed), tokenizer)
        start = time.perf_counter()
        train_vq(adapter, shapes, steps, batch, args.lr, args.seed, progress=False, reseed_fraction=fraction)
        seconds = time.perf_counter() - start
        rng = np.random.default_rng(5)  # the same scenes for every recipe
        one, four = (judge_reconstructions(adapter, k, args.scenes, rng) for k in (1, 4))
        print(
            f"| {steps} x {batch}, re-seed {fraction:g} | {seconds:.0f} | {one['judged_correct']:.1%} | "
            f"{four['judged_correct']:.1%} | {one['corner_codes']} / {four['corner_codes']} | "
            f"{one['code_entropy']:.2f} / {four['code_entropy']:.2f} | "
            f"{one['pixel_mae']:.4f} / {four['pixel_mae']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
