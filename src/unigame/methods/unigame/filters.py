"""Semantic filters: keep a decoded adversarial candidate x̃ only if it still means what x meant.

UniGame (arXiv 2511.19413, §3.3) mines hard examples that must stay on the data manifold: a decoded
candidate x̃ is kept only when a CLIP-style scorer still finds it similar to the item's text (its
caption when the data has one, else the question), threshold 0.6 for real CLIP.

NOTE: the official UniGame code inverts this test — it *adds* candidates whose CLIP score is *below*
the threshold to the buffer. We follow the paper's text: low-similarity (off-manifold) candidates are
rejected.

Filters are small classes picked once at setup (`build_filter`), all called as
``filter(clean_pixels, candidate_pixels, texts) -> FilterResult(keep, scores)`` with pixels
float [B, 3, H, W] in [0, 1]. They run under ``torch.no_grad()``: a filter decides, it is never
differentiated through. The scorer (e.g. the CLIP wrapper in ``unigame.models``) implements
`SemanticScorer`; the game never imports a model family.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FILTERS",
    "ClipFilter",
    "CosineFilter",
    "FilterResult",
    "NoFilter",
    "SemanticFilter",
    "SemanticScorer",
    "build_filter",
]


@runtime_checkable
class SemanticScorer(Protocol):
    """What a filter needs from an image-text model (a CLIP/SigLIP wrapper lives in ``unigame.models``)."""

    def text_image_similarity(self, pixels: Tensor, texts: list[str]) -> Tensor:
        """Return the cosine similarity [B] between image b (pixels [B,3,H,W] in [0,1]) and texts[b]."""
        ...

    def image_features(self, pixels: Tensor) -> Tensor:
        """Return image embeddings [B, E] for pixels [B,3,H,W] in [0,1] (need not be normalised)."""
        ...


class FilterResult(NamedTuple):
    """A filter's decision: ``keep`` bool [B] (True = semantically faithful) and its ``scores`` float [B]."""

    keep: Tensor
    scores: Tensor


@runtime_checkable
class SemanticFilter(Protocol):
    """Callable deciding which decoded candidates x̃ may enter the hard-sample buffer."""

    def __call__(self, clean_pixels: Tensor, candidate_pixels: Tensor, texts: Sequence[str]) -> FilterResult:
        """Return which candidates [B,3,H,W] keep the meaning of their clean images / texts."""
        ...


def _check_inputs(clean_pixels: Tensor, candidate_pixels: Tensor, texts: Sequence[str]) -> int:
    """Return B after checking pixel layouts agree and there is one text per image."""
    if candidate_pixels.dim() != 4 or candidate_pixels.shape[1] != 3:
        raise ValueError(f"candidate_pixels must be [B, 3, H, W], got {tuple(candidate_pixels.shape)}.")
    if clean_pixels.shape != candidate_pixels.shape:
        raise ValueError(
            f"clean_pixels {tuple(clean_pixels.shape)} and candidate_pixels {tuple(candidate_pixels.shape)} "
            "must have the same shape (one candidate per clean image)."
        )
    batch = candidate_pixels.shape[0]
    if len(texts) != batch:
        raise ValueError(
            f"got {len(texts)} texts for {batch} images; pass one text (caption or question) each."
        )
    return batch


def _check_scores(scores: Tensor, batch: int, what: str) -> Tensor:
    """Return the scorer's output as float32 [B], or fail naming the scorer method."""
    scores = torch.as_tensor(scores)
    if scores.shape != (batch,):
        raise ValueError(f"scorer.{what} returned shape {tuple(scores.shape)}, expected ({batch},).")
    return scores.float()


class ClipFilter:
    """Keep x̃ when its text-image similarity to the item's text is high enough (paper's CLIP filter).

    Calibration (picked once):

    * ``"absolute"`` — keep if sim(x̃, text) ≥ ``threshold`` (paper: 0.6 for real CLIP ViT).
    * ``"relative_to_clean"`` — keep if sim(x̃, text) ≥ sim(x, text) − ``margin``·|sim(x, text)|,
      i.e. x̃ may lose at most a fraction ``margin`` of the clean image's own score. With the
      default margin 0.1 this is sim(x̃) ≥ 0.9·sim(x) for positive clean scores, and it stays sane
      when the clean score is negative. Use it for scorers whose similarity scale differs from real
      CLIP's (e.g. a tiny CLIP trained on ShapesWorld), where an absolute 0.6 means nothing.

    ``scores`` are sim(x̃, text) in both modes. NOTE: the official code keeps the candidates that
    *fail* this test; we reject them, as the paper's text says.
    """

    def __init__(
        self,
        scorer: SemanticScorer,
        threshold: float = 0.6,
        calibration: Literal["absolute", "relative_to_clean"] = "absolute",
        margin: float = 0.1,
    ) -> None:
        if calibration not in ("absolute", "relative_to_clean"):
            raise ValueError(
                f"calibration must be 'absolute' or 'relative_to_clean', got {calibration!r}; use "
                "'relative_to_clean' for scorers whose similarity scale differs from real CLIP's."
            )
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"margin must be in [0, 1] (a fraction of the clean score), got {margin!r}.")
        self.scorer = scorer
        self.threshold = float(threshold)
        self.calibration = calibration
        self.margin = float(margin)
        self._bar = self._absolute_bar if calibration == "absolute" else self._relative_bar

    @torch.no_grad()
    def __call__(self, clean_pixels: Tensor, candidate_pixels: Tensor, texts: Sequence[str]) -> FilterResult:
        """Return keep [B] (sim(x̃, text) passes the calibrated threshold) and sim(x̃, text) [B]."""
        batch = _check_inputs(clean_pixels, candidate_pixels, texts)
        sim = self.scorer.text_image_similarity(candidate_pixels, list(texts))
        sim = _check_scores(sim, batch, "text_image_similarity")  # (B,) sim(x̃, text)
        bar = self._bar(clean_pixels, texts, sim)  # (B,) per-item threshold
        return FilterResult(keep=sim >= bar, scores=sim)

    def _absolute_bar(self, clean_pixels: Tensor, texts: Sequence[str], sim: Tensor) -> Tensor:
        return torch.full_like(sim, self.threshold)  # (B,) fixed threshold

    def _relative_bar(self, clean_pixels: Tensor, texts: Sequence[str], sim: Tensor) -> Tensor:
        clean = self.scorer.text_image_similarity(clean_pixels, list(texts))
        clean = _check_scores(clean, sim.shape[0], "text_image_similarity")  # (B,) sim(x, text)
        return clean.to(sim.device) - self.margin * clean.abs().to(sim.device)  # (B,)


class CosineFilter:
    """Keep x̃ when cos(features(x), features(x̃)) ≥ ``threshold`` (ablation '+cosine', Table 4).

    Compares the candidate with its own clean image, not with text, so it needs no caption. The
    paper gives no value for this threshold; 0.9 is our default for CLIP-like image features.
    """

    def __init__(self, scorer: SemanticScorer, threshold: float = 0.9) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"cosine threshold must be in [-1, 1], got {threshold!r}.")
        self.scorer = scorer
        self.threshold = float(threshold)

    @torch.no_grad()
    def __call__(self, clean_pixels: Tensor, candidate_pixels: Tensor, texts: Sequence[str]) -> FilterResult:
        """Return keep [B] (image-feature cosine ≥ threshold) and that cosine [B]; texts are ignored."""
        batch = _check_inputs(clean_pixels, candidate_pixels, texts)
        both = self.scorer.image_features(torch.cat([clean_pixels, candidate_pixels]))  # (2B, E)
        if both.dim() != 2 or both.shape[0] != 2 * batch:
            raise ValueError(
                f"scorer.image_features returned shape {tuple(both.shape)}, expected ({2 * batch}, E)."
            )
        clean, candidate = both.float().split(batch)  # (B, E) each
        cos = F.cosine_similarity(clean, candidate, dim=-1)  # (B,)
        return FilterResult(keep=cos >= self.threshold, scores=cos)


class NoFilter:
    """Keep every candidate (ablation 'decoding only'); scores are all 1."""

    def __init__(self, scorer: SemanticScorer | None = None) -> None:
        self.scorer = scorer  # accepted and unused, so every filter builds the same way

    def __call__(self, clean_pixels: Tensor, candidate_pixels: Tensor, texts: Sequence[str]) -> FilterResult:
        """Return keep = all True [B] and scores = 1 [B]."""
        batch = _check_inputs(clean_pixels, candidate_pixels, texts)
        device = candidate_pixels.device
        return FilterResult(
            keep=torch.ones(batch, dtype=torch.bool, device=device),
            scores=torch.ones(batch, dtype=torch.float32, device=device),
        )


# Config name -> filter class; the trainer picks one once at setup through `build_filter`.
FILTERS: dict[str, type] = {"clip": ClipFilter, "cosine": CosineFilter, "none": NoFilter}


def build_filter(name: str, scorer: SemanticScorer | None, **kwargs: Any) -> SemanticFilter:
    """Return the filter named ``name`` (one of `FILTERS`), built with ``scorer`` and its own options."""
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; allowed: {', '.join(sorted(FILTERS))}.")
    cls = FILTERS[name]
    accepted = [p for p in inspect.signature(cls).parameters if p != "scorer"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"filter {name!r} does not take option(s) {unknown}; it accepts {accepted or 'no options'}."
        )
    if name != "none" and scorer is None:
        raise ValueError(
            f"filter {name!r} needs a scorer (e.g. a CLIP wrapper); pass one or use filter 'none'."
        )
    return cls(scorer, **kwargs)
