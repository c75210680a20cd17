"""Does the understanding branch's vision encoder know shapes? A linear probe on its tokens.

Fits a linear classifier (Adam, 300 steps, small L2) for the shape of a lone object on 3000 scenes
and reports its accuracy on 500 more (by default), from three inputs: the aligned visual tokens the language
model reads, the vision encoder's own output, and raw pixels (the floor: position varies, so pixels
are not linearly separable by shape). Chance is 1/3.

    python benchmarks/shape_probe.py --model ~/.cache/unigame/tiny-janus-<fingerprint>
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> None:
    from unigame.data.pixels import images_to_pixels
    from unigame.data.shapes import ALL_SHAPES, ShapesConfig, render, sample_scene
    from unigame.models.janus import JanusAdapter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a tiny Janus base directory (`unigame base`)")
    parser.add_argument("--scenes", type=int, nargs=2, default=[3000, 500], metavar=("TRAIN", "TEST"))
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    adapter = JanusAdapter.from_pretrained(args.model)
    config = ShapesConfig(min_objects=1, max_objects=1)
    rng = np.random.default_rng(args.seed)

    def features(n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        scenes = [sample_scene(rng, config) for _ in range(n)]
        pixels = images_to_pixels([render(s, config) for s in scenes])
        with torch.no_grad():
            aligned = adapter.visual_tokens(pixels)
            encoder = adapter.model.model.vision_model(adapter.normalize_pixels(pixels)).last_hidden_state
        labels = torch.tensor([ALL_SHAPES.index(s.objects[0].shape) for s in scenes])
        inputs = {"aligned visual tokens": aligned, "vision encoder output": encoder, "pixels": pixels}
        return {k: v.flatten(1) for k, v in inputs.items()}, labels

    train, train_labels = features(args.scenes[0])
    test, test_labels = features(args.scenes[1])
    print(f"| input | shape accuracy (linear probe, {args.scenes[1]} test scenes) |")
    print("|---|---|")
    for name in train:
        x = train[name]
        mean, std = x.mean(0), x.std(0) + 1e-5
        weight = torch.zeros(x.shape[1], len(ALL_SHAPES), requires_grad=True)
        bias = torch.zeros(len(ALL_SHAPES), requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
        for _ in range(args.probe_steps):
            logits = ((x - mean) / std) @ weight + bias
            loss = F.cross_entropy(logits, train_labels) + 1e-3 * weight.square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            predicted = (((test[name] - mean) / std) @ weight + bias).argmax(1)
        print(f"| {name} | {(predicted == test_labels).float().mean().item():.1%} |")


if __name__ == "__main__":
    main()
