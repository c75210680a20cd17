"""Semantic filters with a fake scorer: off-manifold candidates are rejected, near copies pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unigame.methods.unigame.filters import (
    ClipFilter,
    CosineFilter,
    FilterResult,
    NoFilter,
    SemanticFilter,
    SemanticScorer,
    build_filter,
)

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class FakeScorer:
    """CLIP stand-in: image features = centred mean colour of each 2x2 quadrant (12-d); a text is a colour."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale  # < 1 mimics a scorer whose similarity scale is not real CLIP's

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(pixels, 2).flatten(1) - 0.5  # (B, 12)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        rgb = torch.tensor([next(COLOURS[w] for w in t.split() if w in COLOURS) for t in texts])  # (B, 3)
        return (rgb - 0.5).repeat_interleave(4, dim=1)  # (B, 12) same layout as image features

    def text_image_similarity(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        return self.scale * F.cosine_similarity(
            self.image_features(pixels), self._text_features(texts), dim=-1
        )


def _scene(colour: str, size: int = 16) -> torch.Tensor:
    """A flat image of one colour with a small grey square in a corner: (3, H, W) in [0, 1]."""
    img = torch.tensor(COLOURS[colour]).view(3, 1, 1).expand(3, size, size).clone()
    img[:, :4, :4] = 0.5
    return img


@pytest.fixture
def batch():
    """Clean images, and candidates: near copy, a different scene, and uniform noise."""
    g = torch.Generator().manual_seed(0)
    clean = torch.stack([_scene("red")] * 3)  # (3, 3, H, W)
    near = (clean[0] + 0.03 * torch.randn(clean[0].shape, generator=g)).clamp(0, 1)
    other_scene = _scene("green")
    noise = torch.rand(clean[0].shape, generator=g)
    candidates = torch.stack([near, other_scene, noise])  # (3, 3, H, W)
    return clean, candidates, ["a red scene"] * 3


def test_fake_scorer_satisfies_protocol():
    assert isinstance(FakeScorer(), SemanticScorer)
    for f in (ClipFilter(FakeScorer()), CosineFilter(FakeScorer()), NoFilter()):
        assert isinstance(f, SemanticFilter)


def test_clip_filter_rejects_off_manifold_candidates(batch):
    clean, candidates, texts = batch
    result = ClipFilter(FakeScorer(), threshold=0.6)(clean, candidates, texts)
    assert isinstance(result, FilterResult)
    assert result.keep.dtype == torch.bool and result.keep.tolist() == [True, False, False]
    assert result.scores.shape == (3,) and result.scores.dtype == torch.float32
    assert result.scores[0] > 0.9 and result.scores[1] < 0 and result.scores[2] < 0.6


def test_clip_threshold_is_inclusive_and_moves_the_decision(batch):
    clean, candidates, texts = batch
    scores = ClipFilter(FakeScorer())(clean, candidates, texts).scores
    at_near = ClipFilter(FakeScorer(), threshold=float(scores[0]))(clean, candidates, texts)
    assert at_near.keep[0]  # sim == threshold is kept
    above = ClipFilter(FakeScorer(), threshold=float(scores[0]) + 1e-3)(clean, candidates, texts)
    assert not above.keep.any()
    everything = ClipFilter(FakeScorer(), threshold=-1.0)(clean, candidates, texts)
    assert everything.keep.all()


def test_relative_calibration_for_a_differently_scaled_scorer(batch):
    clean, candidates, texts = batch
    weak = FakeScorer(scale=0.3)  # its best similarity is 0.3: an absolute 0.6 rejects everything
    assert not ClipFilter(weak, threshold=0.6)(clean, candidates, texts).keep.any()
    relative = ClipFilter(weak, calibration="relative_to_clean", margin=0.1)
    result = relative(clean, candidates, texts)
    assert result.keep.tolist() == [True, False, False]
    # the rule is sim(x̃) >= sim(x) - margin*|sim(x)|, i.e. ratio 0.9 for positive clean scores
    clean_sim = weak.text_image_similarity(clean, texts)
    assert torch.equal(result.keep, result.scores >= 0.9 * clean_sim)
    strict = ClipFilter(weak, calibration="relative_to_clean", margin=0.0)
    assert strict(clean, clean, texts).keep.all()  # the clean image always passes against itself


def test_relative_calibration_with_negative_clean_scores():
    """A plain ratio 0.9·sim(x) would reject the clean image itself when sim(x) < 0; the margin rule does not."""
    scorer = FakeScorer()
    clean = torch.stack([_scene("red")])  # (1, 3, H, W); the text says blue, so sim(x, text) < 0
    f = ClipFilter(scorer, calibration="relative_to_clean", margin=0.1)
    assert float(scorer.text_image_similarity(clean, ["blue"])) < 0
    assert f(clean, clean, ["blue"]).keep.all()
    yellow = torch.ones_like(clean)
    yellow[:, 2] = 0.0  # (1, 3, H, W) a scene even further from "blue"
    assert not f(clean, yellow, ["blue"]).keep.any()


def test_cosine_filter(batch):
    clean, candidates, texts = batch
    result = CosineFilter(FakeScorer(), threshold=0.9)(clean, candidates, texts)
    assert result.keep.tolist() == [True, False, False]
    assert result.scores[0] > 0.95
    assert CosineFilter(FakeScorer(), threshold=-1.0)(clean, candidates, texts).keep.all()
    with pytest.raises(ValueError, match="threshold"):
        CosineFilter(FakeScorer(), threshold=2.0)


def test_no_filter_keeps_everything(batch):
    clean, candidates, texts = batch
    result = NoFilter()(clean, candidates, texts)
    assert result.keep.all() and result.keep.shape == (3,)
    assert torch.equal(result.scores, torch.ones(3))


def test_filters_do_not_build_graphs(batch):
    clean, candidates, texts = batch
    candidates = candidates.clone().requires_grad_(True)
    for f in (ClipFilter(FakeScorer(), calibration="relative_to_clean"), CosineFilter(FakeScorer())):
        result = f(clean, candidates, texts)
        assert not result.scores.requires_grad


def test_input_validation(batch):
    clean, candidates, texts = batch
    f = ClipFilter(FakeScorer())
    with pytest.raises(ValueError, match="texts"):
        f(clean, candidates, texts[:2])
    with pytest.raises(ValueError, match="same shape"):
        f(clean[:2], candidates, texts)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        f(clean[:, :1], candidates[:, :1], texts)
    with pytest.raises(ValueError, match="calibration"):
        ClipFilter(FakeScorer(), calibration="percentile")


def test_build_filter_picks_by_name(batch):
    clean, candidates, texts = batch
    scorer = FakeScorer()
    clip = build_filter("clip", scorer, threshold=0.5, calibration="relative_to_clean")
    assert isinstance(clip, ClipFilter) and clip.threshold == 0.5
    assert isinstance(build_filter("cosine", scorer, threshold=0.8), CosineFilter)
    assert isinstance(build_filter("none", None), NoFilter)
    assert build_filter("clip", scorer)(clean, candidates, texts).keep.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="allowed: clip, cosine, none"):
        build_filter("siglip", scorer)
    with pytest.raises(ValueError, match="threshold"):
        build_filter("none", None, threshold=0.6)
    with pytest.raises(ValueError, match="needs a scorer"):
        build_filter("clip", None)


def test_bad_scorer_output_is_named(batch):
    clean, candidates, texts = batch

    class Broken(FakeScorer):
        def text_image_similarity(self, pixels, texts):
            return torch.zeros(len(texts), 2)

    with pytest.raises(ValueError, match="text_image_similarity"):
        ClipFilter(Broken())(clean, candidates, texts)
