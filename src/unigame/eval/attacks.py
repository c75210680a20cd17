"""Pixel-space PGD (L-infinity) against the understanding branch: robustness to a white-box attack.

The attack ascends the model's own answer loss (`adapter.understanding_loss`, per sample) with
respect to the input pixels, the standard Madry et al. (2018) projected gradient ascent:

    x_{t+1} = clip_[0,1]( x0 + clip_[-eps, eps]( x_t + alpha * sign(grad_x CE) - x0 ) )

Pixels are in [0, 1], so eps = 8/255 is the usual "8 grey levels" budget. Defaults: no random
start (deterministic), alpha = 2.5 * eps / steps (Madry's rule of thumb, so the walk can reach the
ball's surface and move along it), and each sample keeps the iterate with its highest loss seen
(the clean image included), so the returned loss is never below the clean loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from unigame.data.records import VQARecord
from unigame.eval.common import adapter_device, call_with_supported, exact_match, records_to_pixels

__all__ = ["pgd_attack", "pgd_report"]


def pgd_attack(
    adapter: Any,
    pixels: torch.Tensor,
    questions: list[str],
    answers: list[str],
    eps: float,
    steps: int = 5,
    step_size: float | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L-inf PGD on (B, 3, H, W) pixels in [0, 1]; returns (adversarial pixels, clean loss, adv loss).

    Only the pixels get a gradient (`torch.autograd.grad`), so model parameters' `.grad` stay
    untouched even when LoRA weights require grad. Losses are per sample (B,), detached.
    """
    if eps < 0 or steps < 0:
        raise ValueError(f"PGD needs eps >= 0 and steps >= 0; got eps={eps}, steps={steps}")
    alpha = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    x0 = pixels.detach().float()  # (B, 3, H, W)
    x = x0.clone()
    starts_clean = not (random_start and eps > 0)
    if not starts_clean:
        noise = torch.rand(x0.shape, generator=generator).to(x0) * 2 - 1  # U(-1, 1), drawn on CPU
        x = (x0 + eps * noise).clamp(0, 1)
    best = x0.clone()
    best_loss = torch.full((x0.shape[0],), -float("inf"), device=x0.device)
    clean_loss: torch.Tensor | None = None
    with torch.enable_grad():
        for t in range(steps + 1):
            x.requires_grad_(True)
            loss = adapter.understanding_loss(x, questions, answers).float()  # (B,)
            if t == 0 and starts_clean:
                clean_loss = loss.detach()
            improved = loss.detach() > best_loss  # (B,)
            best[improved] = x.detach()[improved]
            best_loss = torch.where(improved, loss.detach(), best_loss)
            if t == steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), x)
            x = x.detach() + alpha * grad.sign()
            x = (x0 + (x - x0).clamp(-eps, eps)).clamp(0, 1)  # project onto the ball and the image box
    if clean_loss is None:  # random start: the first iterate was not the clean image
        with torch.no_grad():
            clean_loss = adapter.understanding_loss(x0, questions, answers).float()
        keep_clean = clean_loss > best_loss
        best[keep_clean] = x0[keep_clean]
        best_loss = torch.maximum(best_loss, clean_loss)
    return best.detach(), clean_loss, best_loss


def pgd_report(
    adapter: Any,
    records: Sequence[VQARecord],
    eps_values: Sequence[float],
    steps: int = 5,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy (exact match) of greedy answers on clean and PGD-attacked images, per eps.

    Keys: `clean_accuracy`, `n`, `steps`, and per budget `eps_<k>` (eps = k/255) with `accuracy`,
    `loss_clean`/`loss_adv` (mean per-sample CE), `max_linf` (largest measured |x_adv - x|, a
    check that the ball was respected) and `eps`.
    """
    device = adapter_device(adapter)
    clean_hits: list[bool] = []
    per_eps: dict[float, dict[str, list[float]]] = {
        e: {"hits": [], "lc": [], "la": [], "linf": []} for e in eps_values
    }
    total = len(records) * len(eps_values)
    bar = tqdm(total=total, desc="PGD attack", leave=False, disable=not progress)
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        pixels = records_to_pixels(batch).to(device)  # (B, 3, H, W)
        questions, answers = [r.question for r in batch], [r.answer for r in batch]
        clean_pred = call_with_supported(adapter.answer, pixels, questions)
        clean_hits += [exact_match(p, a) for p, a in zip(clean_pred, answers)]
        for eps in eps_values:
            adv, loss_clean, loss_adv = pgd_attack(adapter, pixels, questions, answers, eps, steps)
            adv_pred = call_with_supported(adapter.answer, adv, questions)
            slot = per_eps[eps]
            slot["hits"] += [exact_match(p, a) for p, a in zip(adv_pred, answers)]
            slot["lc"] += loss_clean.tolist()
            slot["la"] += loss_adv.tolist()
            slot["linf"].append(float((adv - pixels).abs().max()))
            bar.update(len(batch))
    bar.close()
    report: dict[str, Any] = {
        "clean_accuracy": sum(clean_hits) / len(clean_hits),
        "n": len(clean_hits),
        "steps": steps,
    }
    for eps, slot in per_eps.items():
        report[f"eps_{round(eps * 255)}"] = {
            "eps": eps,
            "accuracy": sum(slot["hits"]) / len(slot["hits"]),
            "loss_clean": sum(slot["lc"]) / len(slot["lc"]),
            "loss_adv": sum(slot["la"]) / len(slot["la"]),
            "max_linf": max(slot["linf"]),
        }
    return report
