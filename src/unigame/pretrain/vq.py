"""The base's first stage: train the tiny Janus's VQ autoencoder on ShapesWorld renders.

The latent is the L2-normalised `quant_conv` output per token and the codebook is L2-normalised
too (as in Janus's LlamaGen VQ), so quantisation is a cosine nearest neighbour. Dead codes are
re-seeded from the batch's latents in the first 60% of the steps, which keeps a small codebook
fully used; the rest decays the learning rate with every code fixed. Small batches (16) and many
steps reconstruct shapes far better than fewer large batches for the same compute.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unigame.data.pixels import images_to_pixels
from unigame.data.shapes import ShapesConfig, render, sample_scene
from unigame.data.shifts import SHIFT_NAMES, apply_shift
from unigame.models.janus import JanusAdapter
from unigame.pretrain.schedule import cosine_decay

RESEED_FRACTION = 0.6  # of the steps; the rest only refine


def reseed_until(steps: int, fraction: float = RESEED_FRACTION) -> int:
    """Dead codes are re-seeded only before this step: a code re-seeded late is one the decoder
    never learns to draw, and the judge (and so generation) sees its artefacts."""
    return int(fraction * steps)


def lr_factor(step: int, steps: int, fraction: float = RESEED_FRACTION) -> float:
    """Constant while codes are re-seeded, then cosine decay to zero to sharpen shape edges
    (fraction 1.0: constant throughout, the recipe of bases built before the decay existed)."""
    return cosine_decay(step, steps, start=reseed_until(steps, fraction))


def sample_images(
    rng: np.random.Generator, config: ShapesConfig, n: int, shift_prob: float = 0.0
) -> torch.Tensor:
    """(n, 3, H, W) float pixels in [0,1] of freshly sampled scenes, a fraction under shifts."""
    images = []
    for _ in range(n):
        scene = sample_scene(rng, config)
        if shift_prob and rng.random() < shift_prob:
            name = SHIFT_NAMES[int(rng.integers(len(SHIFT_NAMES)))]
            images.append(apply_shift(scene, config, name, rng, strength=float(rng.uniform(0.3, 1.0))))
        else:
            images.append(render(scene, config))
    return images_to_pixels(images)


def train_vq(
    adapter: JanusAdapter,
    config: ShapesConfig,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    reseed_fraction: float = RESEED_FRACTION,
) -> dict[str, float]:
    """Train encoder, quant_conv, codebook, post_quant_conv and decoder; returns final losses."""
    vq = adapter.model.model.vqmodel
    vq.train()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(vq.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, reseed_fraction))
    codebook = vq.quantize.embedding.weight
    usage = torch.zeros(codebook.shape[0])
    stats: dict[str, float] = {}
    bar = tqdm(range(steps), desc="base: VQ autoencoder", disable=not progress)
    for step in bar:
        pixels = sample_images(rng, config, batch_size, shift_prob=0.3)
        latents = adapter.encode_latents(pixels)  # (B, N, D), unit norm
        codes = adapter.quantize(latents.detach())  # (B, N)
        quantized = adapter.codes_to_latents(codes)  # (B, N, D)
        codebook_loss = F.mse_loss(quantized, latents.detach())
        commit_loss = F.mse_loss(latents, quantized.detach())
        straight_through = latents + (quantized - latents).detach()
        recon = adapter.decode_latents_raw(straight_through)  # (B, 3, H, W) in ~[-1, 1]
        target = pixels * 2 - 1
        recon_loss = F.mse_loss(recon, target) + F.l1_loss(recon, target)
        loss = recon_loss + codebook_loss + 0.25 * commit_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            usage = 0.95 * usage + torch.bincount(codes.flatten(), minlength=usage.numel()).float()
            dead = usage < 1e-2
            if (
                step % 20 == 19 and step < reseed_until(steps, reseed_fraction) and bool(dead.any())
            ):  # re-seed unused codes from current latents
                flat = latents.detach().flatten(0, 1)
                pick = torch.randint(0, flat.shape[0], (int(dead.sum()),))
                codebook[dead] = flat[pick] + 0.01 * torch.randn_like(flat[pick])
                usage[dead] = 1.0
        stats = {
            "recon": recon_loss.item(),
            "codebook": codebook_loss.item(),
            "used_codes": float((usage > 1e-2).sum()),
        }
        if step % 10 == 0:
            bar.set_postfix(recon=f"{stats['recon']:.4f}", codes=int(stats["used_codes"]))
    vq.eval()
    return stats
