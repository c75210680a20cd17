"""The base's vision stage: pretrain the tiny Janus's vision encoder before it meets the language model.

Janus-Pro's understanding encoder is a SigLIP that was pretrained long before Janus saw it; a tiny
Janus trained from scratch has no such encoder, and its ViT then learns shapes only through the
language model's answer loss, which is slow: after the whole joint stage a linear probe reads a
lone object's shape from its visual tokens no better than from raw pixels
(`benchmarks/shape_probe.py`). This stage gives the encoder the
same head start a pretrained SigLIP gives: dense supervision from the scene generator, where each
patch predicts the object whose centre falls in it (shape x colour x size, or none), through a
linear head that is thrown away afterwards.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unigame.data.pixels import images_to_pixels
from unigame.data.shapes import ALL_SHAPES, ALL_SIZES, PALETTE, Scene, ShapesConfig, render, sample_scene
from unigame.models.janus import JanusAdapter
from unigame.pretrain.schedule import cosine_decay

_COLOURS = tuple(PALETTE)
NUM_PATCH_CLASSES = 1 + len(ALL_SHAPES) * len(_COLOURS) * len(ALL_SIZES)  # 0 = no object centre


def patch_labels(scenes: list[Scene], grid: int) -> torch.Tensor:
    """(B, grid*grid) class of the object centred in each patch, row-major; 0 where none is."""
    labels = torch.zeros(len(scenes), grid * grid, dtype=torch.long)
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = min(int(obj.x * grid), grid - 1) + grid * min(int(obj.y * grid), grid - 1)
            attribute = (ALL_SHAPES.index(obj.shape) * len(_COLOURS) + _COLOURS.index(obj.colour)) * len(
                ALL_SIZES
            ) + ALL_SIZES.index(obj.size)
            labels[row, cell] = 1 + attribute
    return labels


def train_vision(
    adapter: JanusAdapter,
    config: ShapesConfig,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train the vision encoder (not the aligner) on per-patch object labels; returns final stats."""
    vision = adapter.model.model.vision_model
    grid = adapter.image_size // int(adapter.model.config.vision_config.patch_size)
    if grid * grid != adapter.num_understanding_tokens:
        raise ValueError(
            f"vision pretraining expects a square patch grid: {adapter.num_understanding_tokens} "
            f"understanding tokens for a {grid}x{grid} grid"
        )
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(int(adapter.model.config.vision_config.hidden_size), NUM_PATCH_CLASSES)
    torch.nn.init.normal_(head.weight, 0.0, 0.02, generator=generator)
    torch.nn.init.zeros_(head.bias)
    params = list(vision.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_decay(s, steps))
    rng = np.random.default_rng(seed)
    vision.train()
    stats: dict[str, float] = {}
    bar = tqdm(range(steps), desc="base: vision encoder", disable=not progress)
    for step in bar:
        scenes = [sample_scene(rng, config) for _ in range(batch_size)]
        pixels = images_to_pixels([render(scene, config) for scene in scenes])
        hidden = vision(adapter.normalize_pixels(pixels)).last_hidden_state  # (B, N, D)
        logits = head(hidden)
        labels = patch_labels(scenes, grid)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            images_right = (logits.argmax(-1) == labels).all(dim=1).float().mean()
        stats = {"patch_ce": loss.item(), "images_all_patches_right": images_right.item()}
        if step % 10 == 0:
            bar.set_postfix(ce=f"{stats['patch_ce']:.3f}", right=f"{stats['images_all_patches_right']:.2f}")
    vision.eval()
    return stats
