"""Perturber C: budget bounds, float32 under autocast, gradients, ascent, init, and the noise ablation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unigame.methods.unigame.perturber import NoisePerturber, Perturber, perturbation_regulariser

D = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add sync overhead on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _token_norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.double().norm(dim=-1)  # (B, N) per-token norms, float64 so huge tokens do not overflow


def _latents(seed: int, log10_scale: float, zero_tokens: int, shape=(2, 5, D)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=g) * 10.0**log10_scale  # (B, N, D)
    z[:, :zero_tokens] = 0.0  # some all-zero tokens
    return z


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    log10_scale=st.floats(-30, 30),
    zero_tokens=st.integers(0, 5),
    gate=st.floats(-20, 20),
    budget=st.sampled_from(["absolute", "relative"]),
)
def test_token_norm_never_exceeds_budget(seed, log10_scale, zero_tokens, gate, budget):
    torch.manual_seed(seed)
    p = Perturber(D, hidden=16, budget=budget)
    with torch.no_grad():
        p.gate.fill_(gate)
    z = _latents(seed, log10_scale, zero_tokens)
    delta = p(z)  # (B, N, D)
    assert delta.shape == z.shape and delta.dtype == torch.float32
    assert torch.isfinite(delta).all()
    norms = _token_norms(delta).double()
    if budget == "absolute":
        assert (norms <= p.eps_max * (1 + 1e-5)).all()
    else:
        bound = p.eps_max * _token_norms(z).double()  # ε_max·‖z_t‖
        assert (norms <= bound * (1 + 1e-5) + 1e-30).all()
    # zero tokens: an absolute budget still perturbs them (MLP(0) = bias path), a relative one cannot
    if budget == "relative" and zero_tokens:
        assert (delta[:, :zero_tokens] == 0).all()


def test_absolute_norm_equals_eps_for_ordinary_tokens():
    torch.manual_seed(0)
    p = Perturber(D)
    z = torch.nn.functional.normalize(torch.randn(3, 7, D), dim=-1)  # (B, N, D) unit tokens like Janus
    norms = _token_norms(p(z))
    assert torch.allclose(norms, torch.full_like(norms, float(p.eps)), rtol=1e-5)


def test_relative_budget_scales_with_token_norm():
    torch.manual_seed(0)
    p = Perturber(D, budget="relative")
    z = torch.randn(2, 4, D)
    d1 = p(z)
    # doubling the token norm does not change the direction much but the radius exactly: ‖δ‖ = ε‖z‖
    assert torch.allclose(_token_norms(d1), float(p.eps) * _token_norms(z), rtol=1e-5)
    big = z * 1000.0
    assert torch.allclose(_token_norms(p(big)), float(p.eps) * _token_norms(big), rtol=1e-5)


def test_eps_initial_value_and_range():
    p = Perturber(D)
    assert float(p.eps) == pytest.approx(0.01, rel=1e-6)
    assert isinstance(p.eps, float)
    assert p.eps_tensor().dtype == torch.float32 and p.eps_tensor().requires_grad
    q = Perturber(D, eps_max=0.5, eps_init=0.4)
    assert float(q.eps) == pytest.approx(0.4, rel=1e-6)
    with pytest.raises(ValueError, match="eps_init"):
        Perturber(D, eps_max=0.02, eps_init=0.02)
    with pytest.raises(ValueError, match="budget"):
        Perturber(D, budget="pixels")


def test_last_layer_orthogonal_init():
    torch.manual_seed(0)
    for dim, hidden in [(8, 8), (8, 32), (32, 8)]:
        w = Perturber(dim, hidden=hidden).mlp[-1].weight.detach()  # (D, W)
        gram = w @ w.T if dim <= hidden else w.T @ w
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)
        assert (Perturber(dim, hidden=hidden).mlp[-1].bias == 0).all()


def test_mlp_layout():
    p = Perturber(6, hidden=10)
    kinds = [type(m).__name__ for m in p.mlp]
    assert kinds == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert [(m.in_features, m.out_features) for m in p.mlp if isinstance(m, torch.nn.Linear)] == [
        (6, 10),
        (10, 10),
        (10, 6),
    ]


def test_gradients_reach_mlp_and_gate():
    torch.manual_seed(0)
    p = Perturber(D)
    z = torch.randn(2, 5, D)
    target = torch.randn(2, 5, D)
    (p(z) * target).sum().backward()
    for name, param in p.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_ascent_increases_toy_loss():
    """Maximising L_C = f(z + δ) − λ‖δ‖² with AdamW (gen_lr 5e-3) raises it and pushes ε up."""
    torch.manual_seed(0)
    p = Perturber(D)
    z = torch.nn.functional.normalize(torch.randn(4, 6, D), dim=-1)  # (B, N, D)
    w = torch.randn(D)

    def objective() -> torch.Tensor:
        delta = p(z)
        return ((z + delta) @ w).pow(2).mean() * 100 - 0.1 * p.regulariser(delta)

    opt = torch.optim.AdamW(p.parameters(), lr=5e-3, weight_decay=0.0)
    before, eps_before = float(objective().detach()), p.eps
    for _ in range(30):
        opt.zero_grad()
        (-objective()).backward()  # gradient ascent on L_C
        opt.step()
    assert float(objective().detach()) > before
    assert float(p.eps) > eps_before


def test_fp32_output_under_bf16_autocast():
    torch.manual_seed(0)
    p = Perturber(D)
    z = torch.randn(2, 5, D).bfloat16()
    reference = p(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = p(z)
        assert delta.dtype == torch.float32
        loss = p.regulariser(delta)
    assert loss.dtype == torch.float32
    assert torch.equal(delta, reference)  # autocast had no effect inside the perturber


def test_bf16_parameters_rejected():
    p = Perturber(D).bfloat16()
    with pytest.raises(TypeError, match="float32"):
        p(torch.randn(1, 2, D))


def test_feature_dim_for_feature_maps():
    torch.manual_seed(0)
    p = Perturber(D)
    fmap = torch.randn(2, D, 3, 4)  # (B, D, H, W)
    q = Perturber(D, feature_dim=1)
    q.load_state_dict(p.state_dict())
    delta = q(fmap)  # (B, D, H, W)
    assert delta.shape == fmap.shape
    expected = p(fmap.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # same per-token map
    assert torch.allclose(delta, expected, atol=1e-7)
    assert (delta.norm(dim=1) <= p.eps_max * (1 + 1e-5)).all()


def test_regulariser_is_batch_mean_of_per_sample_squared_norm():
    delta = torch.zeros(2, 3, 4)
    delta[0, 0, 0] = 3.0
    delta[0, 2, 1] = 4.0  # sample 0: ‖δ‖² = 25
    delta[1, 1, 3] = 1.0  # sample 1: ‖δ‖² = 1
    assert float(perturbation_regulariser(delta)) == pytest.approx(13.0)
    assert float(Perturber(4).regulariser(delta.bfloat16())) == pytest.approx(13.0)
    # every token at ‖δ_t‖ = ε gives N·ε²
    p = Perturber(D)
    z = torch.nn.functional.normalize(torch.randn(2, 5, D), dim=-1)
    with torch.no_grad():
        assert float(p.regulariser(p(z))) == pytest.approx(5 * p.eps**2, rel=1e-4)


def test_mean_regulariser_is_the_per_element_mean():
    delta = torch.zeros(2, 3, 4)
    delta[0, 0, 0] = 3.0
    delta[0, 2, 1] = 4.0
    delta[1, 1, 3] = 1.0  # Σ δ² = 26 over 2·3·4 = 24 elements
    assert float(perturbation_regulariser(delta, "mean")) == pytest.approx(26 / 24)
    assert float(Perturber(4).regulariser(delta.bfloat16(), "mean")) == pytest.approx(26 / 24)
    # every token at ‖δ_t‖ = ε gives ε²/D: N·D times less than the sum form
    p = Perturber(D)
    z = torch.nn.functional.normalize(torch.randn(2, 5, D), dim=-1)
    with torch.no_grad():
        delta = p(z)
        assert float(p.regulariser(delta, "mean")) == pytest.approx(p.eps**2 / D, rel=1e-4)
        assert float(p.regulariser(delta, "sum")) == pytest.approx(
            5 * D * float(p.regulariser(delta, "mean"))
        )
    with pytest.raises(ValueError, match="sum"):
        perturbation_regulariser(delta, "l1")


# ------------------------------------------------------------------------------------------ noise


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), log10_scale=st.floats(-30, 30), zero_tokens=st.integers(0, 5))
def test_noise_perturber_bound(seed, log10_scale, zero_tokens):
    p = NoisePerturber(seed=seed)
    z = _latents(seed, log10_scale, zero_tokens)
    norms = _token_norms(p(z))
    assert torch.allclose(norms, torch.full_like(norms, float(p.eps)), rtol=1e-5)


def test_noise_perturber_interface_and_reproducibility():
    a, b = NoisePerturber(seed=3), NoisePerturber(seed=3)
    z = torch.randn(2, 5, D)
    assert torch.equal(a(z), b(z))
    assert not torch.equal(a(z), a(z))  # fresh noise every call
    assert float(a.eps) == pytest.approx(0.01, rel=1e-6)
    assert a.regulariser(a(z)).shape == ()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert a(z.bfloat16()).dtype == torch.float32
    fixed = NoisePerturber(learn_gate=False)
    assert not fixed.gate.requires_grad
    # relative budget works the same way
    r = NoisePerturber(budget="relative")
    assert torch.allclose(_token_norms(r(z)), float(r.eps) * _token_norms(z), rtol=1e-5)


def test_noise_perturber_state_dict_resumes_the_noise_stream():
    a = NoisePerturber(seed=7)
    z = torch.randn(2, 5, D)
    a(z)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # safetensors-friendly
    expected = a(z)
    b = NoisePerturber(seed=123)
    b.load_state_dict(state)
    assert torch.equal(b(z), expected)


def test_noise_gate_learns_under_ascent():
    p = NoisePerturber(seed=0)
    z = torch.randn(2, 5, D)
    opt = torch.optim.AdamW(p.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(5):
        opt.zero_grad()
        (-p(z).pow(2).sum()).backward()
        opt.step()
    assert float(p.eps) > 0.01
    assert math.isfinite(p.eps)


def test_eps_max_zero_gives_exactly_zero_delta_and_ignores_eps_init():
    """The ε = 0 control: δ ≡ 0 for any input and any weights, ε logged as 0, eps_init not checked."""
    z = torch.randn(2, 5, D) * 3
    for p in (Perturber(D, eps_max=0.0, eps_init=0.7), NoisePerturber(eps_max=0.0, eps_init=-1.0)):
        assert p.eps == 0.0
        for budget_z in (z, z * 1e4):
            assert torch.equal(p(budget_z), torch.zeros_like(z))
    relative = Perturber(D, eps_max=0.0, budget="relative")
    assert torch.equal(relative(z), torch.zeros_like(z))
    with pytest.raises(ValueError, match="eps_max must be >= 0"):
        Perturber(D, eps_max=-0.01)
