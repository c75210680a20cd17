"""The challenger C: a per-token perturbation of decodable latent tokens with a learnable, bounded budget.

UniGame's perturber (arXiv 2511.19413, §3 and App. B.2) maps each latent token z_t to a small offset

    δ_t = ε · normalize(MLP(z_t)),    ε = ε_max · sigmoid(s) ∈ [0, ε_max],

so ‖δ_t‖ ≤ ε_max for every token, whatever the input. The MLP is Linear(D,W)-GELU-Linear(W,W)-GELU-
Linear(W,D) with an orthogonally initialised last layer; s is one learnable scalar gate.
ε_max = 0 is allowed (the "UniGame with ε = 0" control): then δ ≡ 0 exactly and the initial ε is
ignored; the trainer does not update such a perturber.

Budget modes (chosen once, at construction):

* ``"absolute"`` — the paper's rule above; right when latent tokens have norm ~1 (Janus VQ latent
  tokens are L2-normalised, so this is the default).
* ``"relative"`` — δ_t = ε · ‖z_t‖ · normalize(MLP(z_t)), so ‖δ_t‖ ≤ ε_max · ‖z_t‖: ε is then a
  fraction of each token's own norm. Use it for latents whose scale is not ~1 (e.g. un-normalised
  continuous VAE latents), where an absolute ε_max = 0.02 would be either invisible or huge.

Precision: the perturbation is computed in float32 with autocast disabled, even inside a bf16
autocast region, because bf16 (8 mantissa bits) washes out an offset of relative size ~1e-2 and its
gradient (paper App. B.2). Inputs are cast to float32 and δ is returned in float32.

Tokens: features sit on ``feature_dim`` (default -1), so (B, N, D) token sequences — what a model
adapter's ``encode_latents`` returns — work as is, and (B, D, H, W) feature maps work with
``feature_dim=1``. Every other axis is treated as indexing independent tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["BUDGETS", "REGULARISERS", "NoisePerturber", "Perturber", "perturbation_regulariser"]

Budget = Literal["absolute", "relative"]


def _stable_norm(v: Tensor) -> Tensor:
    """Return ‖v‖ over the last dim (..., 1) without overflow/underflow for huge or tiny entries."""
    scale = v.abs().amax(dim=-1, keepdim=True)  # (..., 1) largest entry
    safe = scale.clamp_min(torch.finfo(v.dtype).tiny)  # (..., 1) avoid 0/0 on zero rows
    return scale * torch.linalg.vector_norm(v / safe, dim=-1, keepdim=True)  # (..., 1)


def _unit_direction(v: Tensor, eps: float) -> Tensor:
    """Return v / ‖v‖ along the last dim, with norm ≤ 1 always: zero or non-finite rows give 0.

    The row is first divided by its largest absolute entry, so the norm cannot overflow float32 for
    huge inputs (and after that rescale ‖v‖ ≥ 1 unless v = 0, so ``eps`` only guards zero rows).
    Non-finite rows (an MLP output that overflowed to inf) become 0 rather than NaN.
    """
    scale = v.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)  # (..., 1)
    v = v / scale  # (..., D) largest entry has magnitude 1
    u = v / v.norm(dim=-1, keepdim=True).clamp_min(eps)  # (..., D) unit (or zero) direction
    finite = torch.isfinite(u).all(dim=-1, keepdim=True)  # (..., 1)
    return torch.where(finite, u, torch.zeros_like(u))


def _absolute_radius(z: Tensor) -> Tensor:
    """Radius multiplier 1 per token: ‖δ_t‖ = ε (paper rule, latents of norm ~1)."""
    return torch.ones_like(z[..., :1])  # (..., 1)


def _relative_radius(z: Tensor) -> Tensor:
    """Radius multiplier ‖z_t‖ per token: ‖δ_t‖ = ε·‖z_t‖ (latents whose scale is not ~1)."""
    return _stable_norm(z)  # (..., 1)


# Budget modes, picked once at construction; each maps float32 tokens (..., D) to a radius (..., 1).
BUDGETS: dict[str, Callable[[Tensor], Tensor]] = {"absolute": _absolute_radius, "relative": _relative_radius}


def _sum_of_squares(delta: Tensor) -> Tensor:
    """``(1/B) Σ_b Σ_{t,d} δ[b, t, d]²``: each sample's squared L2 norm (all tokens and features),
    averaged over the batch (dim 0). With every token at ‖δ_t‖ = ε it equals N·ε²."""
    return delta.float().pow(2).flatten(1).sum(dim=1).mean()  # () scalar


def _mean_of_squares(delta: Tensor) -> Tensor:
    """``mean_{b,t,d} δ[b, t, d]²``: the per-element mean (the official code's form). With every
    token at ‖δ_t‖ = ε it equals ε²/D, N·D times less than `_sum_of_squares`."""
    return delta.float().pow(2).mean()  # () scalar


# Forms of the ‖δ‖² term of L_C (`game.reg_form`), picked once at setup; each maps δ (B, ...) to a
# float32 scalar.
REGULARISERS: dict[str, Callable[[Tensor], Tensor]] = {"sum": _sum_of_squares, "mean": _mean_of_squares}


def perturbation_regulariser(delta: Tensor, form: str = "sum") -> Tensor:
    """Return the ‖δ‖² of the λ‖δ‖² term of L_C, in float32.

    ``form="sum"``: ``(1/B) Σ_b Σ_{t,d} δ[b, t, d]²``, the squared L2 norm of each sample's whole
    perturbation (all tokens, all features) averaged over the B samples (dim 0); N·ε² when every
    token has ‖δ_t‖ = ε. ``form="mean"``: the mean of δ² over every element, ε²/D then.

    The perturber fixes each token's norm (ε, or ε·‖z_t‖ with a relative budget), so either form
    depends on ε alone: λ > 0 never shapes δ's direction, it only pulls the gate ε down.
    """
    if form not in REGULARISERS:
        raise ValueError(f"form must be one of {sorted(REGULARISERS)}, got {form!r}.")
    return REGULARISERS[form](delta)


class _GatedPerturbation(nn.Module):
    """Shared gate, budget and float32 plumbing of the learned and the random-noise perturbers."""

    def __init__(
        self,
        eps_max: float,
        eps_init: float,
        budget: Budget,
        feature_dim: int,
        norm_eps: float,
    ) -> None:
        super().__init__()
        if not eps_max >= 0:
            raise ValueError(
                f"eps_max must be >= 0, got {eps_max!r}; the paper uses 0.02 (0: the ε = 0 control)."
            )
        if eps_max > 0 and not 0 < eps_init < eps_max:
            raise ValueError(
                f"eps_init must lie strictly inside (0, eps_max={eps_max}), got {eps_init!r}; "
                "the gate is ε_max·sigmoid(s), which never reaches 0 or ε_max (paper: 0.01 of 0.02)."
            )
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}.")
        self.eps_max = float(eps_max)
        self.budget = budget
        self.feature_dim = int(feature_dim)
        self.norm_eps = float(norm_eps)
        self._radius = BUDGETS[budget]
        # s such that ε_max·sigmoid(s) = eps_init; float32 like everything the perturber owns. With
        # eps_max = 0, ε = 0·sigmoid(s) = 0 whatever s (eps_init is ignored, s starts at 0).
        p = eps_init / eps_max if eps_max > 0 else 0.5
        self.gate = nn.Parameter(torch.tensor(math.log(p / (1 - p)), dtype=torch.float32))

    @property
    def eps(self) -> float:
        """Current budget ε = ε_max·sigmoid(s) as a plain float, for logging (see `eps_tensor`)."""
        return float(self.eps_tensor().detach())

    def eps_tensor(self) -> Tensor:
        """Current budget ε = ε_max·sigmoid(s), a differentiable 0-d float32 tensor."""
        return self.eps_max * torch.sigmoid(self.gate)

    def regulariser(self, delta: Tensor, form: str = "sum") -> Tensor:
        """Return ‖δ‖² in `form` (``sum``: ``(1/B) Σ_b ‖δ_b‖²``; ``mean``: per element), see
        `perturbation_regulariser`."""
        return perturbation_regulariser(delta, form)

    def _directions(self, z: Tensor) -> Tensor:
        """Return un-normalised per-token directions (..., D) for float32 tokens z (..., D)."""
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        """Return δ (float32, same shape as z) with ‖δ_token‖ ≤ ε_max (absolute) or ε_max·‖z_token‖."""
        for name, param in self.named_parameters():
            if param.dtype != torch.float32:
                raise TypeError(
                    f"perturber parameter {name!r} is {param.dtype}; the perturber must stay float32 "
                    "(paper App. B.2: bf16 washes out the perturbation gradient). Cast the model, not "
                    "the perturber, or call perturber.float()."
                )
        with torch.autocast(device_type=z.device.type, enabled=False):
            tokens = z.float().movedim(self.feature_dim, -1)  # (..., D) features last
            direction = _unit_direction(self._directions(tokens), self.norm_eps)  # (..., D) ‖·‖ ≤ 1
            delta = self.eps_tensor() * self._radius(tokens) * direction  # (..., D)
            return delta.movedim(-1, self.feature_dim)  # same layout as z


class Perturber(_GatedPerturbation):
    """Learned challenger C: δ = ε · normalize(MLP(z)) per token, ε = ε_max·sigmoid(s).

    Args:
        dim: token feature size D.
        hidden: MLP width W (default D).
        eps_max: hard upper bound on ε (paper 0.02).
        eps_init: initial ε (paper 0.01); must lie in (0, eps_max) (ignored when eps_max = 0).
        budget: ``"absolute"`` (‖δ_t‖ ≤ ε_max) or ``"relative"`` (‖δ_t‖ ≤ ε_max·‖z_t‖), see module doc.
        feature_dim: axis of z holding the D features (-1 for (B, N, D), 1 for (B, D, H, W)).
        norm_eps: guard for normalising an all-zero MLP output (that token gets δ = 0).
    """

    def __init__(
        self,
        dim: int,
        hidden: int | None = None,
        eps_max: float = 0.02,
        eps_init: float = 0.01,
        budget: Budget = "absolute",
        feature_dim: int = -1,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__(eps_max, eps_init, budget, feature_dim, norm_eps)
        width = dim if hidden is None else hidden
        self.mlp = nn.Sequential(
            nn.Linear(dim, width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Linear(width, dim),
        )
        # Orthogonal last layer (paper): the initial directions spread over all D features instead of
        # collapsing onto a few; its bias starts at 0 so direction depends on z from step 0.
        nn.init.orthogonal_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def _directions(self, z: Tensor) -> Tensor:
        return self.mlp(z)  # (..., D)


class NoisePerturber(_GatedPerturbation):
    """Ablation 'random noise in token space': δ = ε · (random unit direction) per token, no MLP.

    Directions are standard-normal draws normalised per token, taken from this module's own CPU
    ``torch.Generator`` (seeded by ``seed``) and then moved to z's device, so runs are reproducible
    across devices. The generator state is part of ``state_dict()`` (key ``_extra_state``, a uint8
    tensor), so a resumed run draws the same noise as an uninterrupted one. The gate s is the same as
    `Perturber`'s (so ε is reported alike); it is trainable when ``learn_gate`` (the ascent then only
    moves ε), else fixed at ``eps_init``.
    """

    def __init__(
        self,
        eps_max: float = 0.02,
        eps_init: float = 0.01,
        budget: Budget = "absolute",
        feature_dim: int = -1,
        seed: int = 0,
        learn_gate: bool = True,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__(eps_max, eps_init, budget, feature_dim, norm_eps)
        self.gate.requires_grad_(learn_gate)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def _directions(self, z: Tensor) -> Tensor:
        noise = torch.randn(z.shape, generator=self.generator, dtype=torch.float32)  # (..., D) on CPU
        return noise.to(z.device)

    def get_extra_state(self) -> Tensor:
        """Return the noise generator state (uint8 tensor) so checkpoints resume the same noise stream."""
        return self.generator.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        """Restore the noise generator state saved by `get_extra_state`."""
        self.generator.set_state(state.to(device="cpu", dtype=torch.uint8))
