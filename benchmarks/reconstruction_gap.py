"""How much the generation branch's VQ round trip alone costs the understanding branch.

The decoder adversary's candidate is x̃ = G(z + δ). Before any perturbation, G(z) already differs
from x by the VQ's reconstruction error; this script measures that gap on ShapesWorld validation
items: per-sample CE and greedy accuracy of the understanding branch on x, on G(z) (continuous
latents, what the adversary decodes) and on G(quantise(z)) (codebook latents).

    python benchmarks/reconstruction_gap.py --model ~/.cache/unigame/tiny-janus-<fingerprint> --items 512
"""

from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    from unigame.data.pixels import images_to_pixels
    from unigame.data.shapes import Scene, ShapesConfig, judge_scene, label_holds
    from unigame.data.splits import build_split
    from unigame.models.janus import JanusAdapter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a tiny Janus base directory (`unigame base`)")
    parser.add_argument("--items", type=int, default=512, help="items of the split (split seed 0)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    adapter = JanusAdapter.from_pretrained(args.model)
    records = build_split(args.split, args.items, 0)
    config = ShapesConfig()
    views = {"x (clean)": [], "G(z), continuous": [], "G(q(z)), quantised": []}
    ce = {k: [] for k in views}
    scene_kept = {k: [] for k in views}
    label_kept = {k: [] for k in views}
    answers = [r.answer for r in records]
    with torch.no_grad():
        for start in range(0, len(records), args.batch):
            chunk = records[start : start + args.batch]
            pixels = images_to_pixels([r.image for r in chunk])
            questions, gold = [r.question for r in chunk], [r.answer for r in chunk]
            latents = adapter.encode_latents(pixels)
            images = {
                "x (clean)": pixels,
                "G(z), continuous": adapter.decode_latents(latents).float(),
                "G(q(z)), quantised": adapter.decode_codes(adapter.quantize(latents)).float(),
            }
            for name, image in images.items():
                views[name] += adapter.answer(image, questions)
                ce[name].append(adapter.understanding_loss(image, questions, gold).float())
                uint8 = (image.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
                for picture, record in zip(uint8, chunk):
                    scene = Scene.from_dict(record.meta["scene"])
                    scene_kept[name].append(judge_scene(picture, scene, config).all_correct)
                    label_kept[name].append(label_holds(picture, record.question, record.answer, config))
    print(f"{len(records)} ShapesWorld {args.split} items, model {args.model}\n")
    print("| input | mean CE | accuracy | answers changed vs x | scene kept (judge) | label kept (judge) |")
    print("|---|---:|---:|---:|---:|---:|")
    clean = views["x (clean)"]
    for name, predictions in views.items():
        accuracy = sum(p.strip() == a for p, a in zip(predictions, answers)) / len(answers)
        changed = sum(p != c for p, c in zip(predictions, clean)) / len(answers)
        kept, label = 100 * np.mean(scene_kept[name]), 100 * np.mean(label_kept[name])
        print(
            f"| {name} | {torch.cat(ce[name]).mean():.3f} | {100 * accuracy:.1f}% | {100 * changed:.1f}% "
            f"| {kept:.1f}% | {label:.1f}% |"
        )


if __name__ == "__main__":
    main()
