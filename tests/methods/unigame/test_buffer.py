"""Hard-sample buffer: capacity, keeps the hardest, τ semantics, mining stats, exact checkpoint round trip."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unigame.methods.unigame.buffer import HardSampleBuffer, MineStats, percentile_threshold

SHAPE = (4, 3)  # (N, D) latent tokens of one item


def _batch(hardness: list[float], start_id: int = 0):
    b = len(hardness)
    latents = torch.arange(b * 12, dtype=torch.float32).reshape(b, *SHAPE) + 100 * start_id  # (B, N, D)
    ids = [f"item{start_id + i}" for i in range(b)]
    payload = [{"question": f"q{start_id + i}?", "answer": "yes"} for i in range(b)]
    return latents, torch.tensor(hardness), ids, payload


# ------------------------------------------------------------------------------------------ push


def test_push_fills_then_replaces_only_harder():
    buf = HardSampleBuffer(capacity=3)
    assert buf.push(*_batch([1.0, 2.0, 3.0])) == 3
    assert len(buf) == 3
    assert buf.push(*_batch([0.5], start_id=10)) == 0  # easier than everything: rejected
    assert sorted(buf.hardness.tolist()) == [1.0, 2.0, 3.0]
    assert buf.push(*_batch([1.0], start_id=11)) == 0  # equal to the weakest: not strictly harder
    assert buf.push(*_batch([5.0], start_id=12)) == 1  # replaces H = 1.0 in its slot
    assert buf.ids == ["item12", "item1", "item2"]
    assert sorted(buf.hardness.tolist()) == [2.0, 3.0, 5.0]


def test_push_counts_survivors_of_the_same_call():
    buf = HardSampleBuffer(capacity=2)
    # four items enter in turn, but only the two hardest of this call survive it
    assert buf.push(*_batch([1.0, 2.0, 3.0, 4.0])) == 2
    assert sorted(buf.hardness.tolist()) == [3.0, 4.0]


def test_stored_latents_are_detached_compact_copies():
    buf = HardSampleBuffer(capacity=4)
    latents = torch.randn(3, *SHAPE, requires_grad=True)
    buf.push(latents * 2, torch.tensor([1.0, 2.0, 3.0]), ["a", "b", "c"])
    out, ids, payload = buf.gather([0, 1, 2])
    assert not out.requires_grad
    assert torch.equal(out, (latents * 2).detach())
    assert ids == ["a", "b", "c"] and payload == [{}, {}, {}]
    assert buf.memory_bytes() == 3 * 12 * 4  # exactly the items, not the whole source batch


def test_push_validates_inputs():
    buf = HardSampleBuffer(capacity=4)
    latents, h, ids, payload = _batch([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        buf.push(latents, torch.tensor([1.0, float("nan")]), ids, payload)
    with pytest.raises(ValueError, match="ids"):
        buf.push(latents, h, ids[:1], payload)
    with pytest.raises(ValueError, match="JSON"):
        buf.push(latents, h, ids, [{"image": torch.zeros(1)}, {}])
    buf.push(latents, h, ids, payload)
    with pytest.raises(ValueError, match="layout"):
        buf.push(torch.zeros(1, 5, 3), torch.tensor([9.0]), ["x"])
    with pytest.raises(ValueError, match="capacity"):
        HardSampleBuffer(capacity=0)


@settings(max_examples=80, deadline=None)
@given(
    capacity=st.integers(1, 6),
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 8).map(float), st.booleans()), min_size=1, max_size=7),
        min_size=1,
        max_size=6,
    ),
)
def test_buffer_holds_top_capacity_hardness_of_pushed_items(capacity, batches):
    """After any push sequence: never over capacity, and exactly the top-`capacity` H values remain."""
    buf = HardSampleBuffer(capacity=capacity)
    passed_values: list[float] = []
    offered: dict[str, torch.Tensor] = {}
    serial = 0
    for batch in batches:
        hardness = [h for h, _ in batch]
        mask = torch.tensor([ok for _, ok in batch])
        latents, h, ids, payload = _batch(hardness, start_id=serial)
        serial += len(batch)
        # push only the items that passed (what `mine` does after its τ test)
        keep = mask.nonzero().flatten().tolist()
        if keep:
            buf.push(latents[keep], h[keep], [ids[i] for i in keep], [payload[i] for i in keep])
        passed_values += [hardness[i] for i in keep]
        offered.update({ids[i]: latents[i] for i in keep})
        assert len(buf) <= capacity
    expected = sorted(passed_values, reverse=True)[:capacity]
    assert sorted(buf.hardness.tolist(), reverse=True) == expected
    # slot bookkeeping stays aligned: each stored latent is the one pushed with its id
    stored, stored_ids, _ = buf.gather(range(len(buf)))
    for latent, item_id in zip(stored, stored_ids):
        assert torch.equal(latent, offered[item_id])


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 6),
    q=st.sampled_from([0.0, 60.0, 90.0]),
    batches=st.lists(
        st.lists(st.tuples(st.floats(0, 10), st.booleans()), min_size=1, max_size=7),
        min_size=1,
        max_size=5,
    ),
)
def test_mine_holds_top_capacity_of_eligible_items(capacity, q, batches):
    """Mining = τ test + filter + push: the buffer ends with the top-`capacity` H of eligible items."""
    buf = HardSampleBuffer(capacity=capacity)
    eligible: list[float] = []
    for n, batch in enumerate(batches):
        hardness = [h for h, _ in batch]
        latents, h, ids, payload = _batch(hardness, start_id=10 * n)
        mask = torch.tensor([ok for _, ok in batch])
        tau = float(torch.quantile(h.double(), q / 100))
        stats = buf.mine(latents, h, mask, ids, payload, percentile=q)
        assert stats.tau == pytest.approx(tau)
        eligible += [float(x) for x, ok in zip(h, mask) if ok and float(x) >= stats.tau]
        assert stats.n_eligible == sum(bool(ok) and float(x) >= stats.tau for x, ok in zip(h, mask))
    assert sorted(buf.hardness.tolist(), reverse=True) == sorted(eligible, reverse=True)[:capacity]


# ------------------------------------------------------------------------------------------ τ, mine


def test_percentile_threshold_linear_interpolation():
    h = torch.tensor([4.0, 1.0, 3.0, 2.0, 5.0])
    # sorted [1,2,3,4,5], q=60 -> rank 0.6*4 = 2.4 -> 3 + 0.4*(4-3) = 3.4 (numpy "linear")
    assert percentile_threshold(h, 60) == pytest.approx(3.4)
    assert percentile_threshold(h, 0) == 1.0 and percentile_threshold(h, 100) == 5.0
    assert percentile_threshold(torch.tensor([7.0]), 60) == 7.0
    assert percentile_threshold(h) == pytest.approx(3.4)  # default q = 60
    with pytest.raises(ValueError, match="percentile"):
        percentile_threshold(h, 101)


def test_mine_keeps_hard_and_filtered_items():
    buf = HardSampleBuffer(capacity=10)
    latents, h, ids, payload = _batch([4.0, 1.0, 3.0, 2.0, 5.0])
    passed = torch.tensor([True, True, True, True, False])
    stats = buf.mine(latents, h, passed, ids, payload, percentile=60)
    assert isinstance(stats, MineStats)
    assert stats.tau == pytest.approx(3.4)
    assert stats.n_candidates == 2  # H = 4 and 5 are >= 3.4
    assert stats.n_passed_filter == 4
    assert stats.n_eligible == 1  # H = 5 failed the filter
    assert stats.n_pushed == 1
    assert buf.ids == ["item0"]
    _, _, got_payload = buf.gather([0])
    assert got_payload == [{"question": "q0?", "answer": "yes"}]


def test_mine_threshold_is_inclusive_and_uses_the_whole_batch():
    buf = HardSampleBuffer(capacity=10)
    latents, h, ids, payload = _batch([2.0, 2.0, 2.0])
    stats = buf.mine(latents, h, torch.tensor([True, False, True]), ids, payload)
    assert stats.tau == 2.0 and stats.n_candidates == 3 and stats.n_pushed == 2
    empty = HardSampleBuffer(capacity=10)
    stats = empty.mine(latents, h, torch.zeros(3, dtype=torch.bool), ids)
    assert stats.n_pushed == 0 and len(empty) == 0


# ------------------------------------------------------------------------------------------ replay


def test_sample_uniform_without_replacement_when_possible():
    buf = HardSampleBuffer(capacity=5)
    buf.push(*_batch([1.0, 2.0, 3.0, 4.0, 5.0]))
    g = torch.Generator().manual_seed(0)
    latents, ids, payload = buf.sample(5, g)
    assert latents.shape == (5, *SHAPE) and sorted(ids) == sorted(buf.ids)  # a permutation
    latents, ids, _ = buf.sample(12, g)
    assert latents.shape == (12, *SHAPE) and set(ids) <= set(buf.ids)  # with replacement
    assert buf.sample(0, g)[0].shape == (0, *SHAPE)
    counts = torch.bincount(buf.sample_indices(5000, g), minlength=5).float()
    assert (counts / 5000 - 0.2).abs().max() < 0.03  # uniform
    with pytest.raises(ValueError, match="empty"):
        HardSampleBuffer().sample(1, g)


def test_update_hardness_changes_eviction_order():
    buf = HardSampleBuffer(capacity=2)
    buf.push(*_batch([1.0, 2.0]))
    buf.update_hardness([1], torch.tensor([0.5]))  # item1 turned out easy on replay
    buf.push(*_batch([1.5], start_id=5))
    assert buf.ids == ["item0", "item5"]


# ------------------------------------------------------------------------------------------ state


def test_state_dict_roundtrip_through_safetensors_gives_identical_sampling():
    buf = HardSampleBuffer(capacity=4)
    buf.push(*_batch([3.0, 1.0, 4.0, 1.5, 9.0, 2.6]))  # evictions happen: slot order is not sorted
    state = buf.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    blob = st_save(tensors, metadata={"buffer": state["metadata"]})  # what a checkpoint writes
    json.loads(state["metadata"])

    restored = HardSampleBuffer(capacity=4)
    restored.load_state_dict({**st_load(blob), "metadata": state["metadata"]})
    assert restored.ids == buf.ids and torch.equal(restored.hardness, buf.hardness)
    assert restored.memory_bytes() == buf.memory_bytes()

    g1, g2 = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    for k in (3, 4, 9):
        a, b = buf.sample(k, g1), restored.sample(k, g2)
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    # and later pushes evict the same slots
    more = _batch([2.0, 7.0], start_id=50)
    buf.push(*more)
    restored.push(*more)
    assert restored.ids == buf.ids


def test_empty_state_dict_roundtrip():
    buf = HardSampleBuffer(capacity=3)
    state = buf.state_dict()
    st_load(st_save({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}))
    restored = HardSampleBuffer(capacity=3)
    restored.load_state_dict(state)
    assert len(restored) == 0
    restored.push(*_batch([1.0]))
    assert len(restored) == 1


def test_load_into_smaller_capacity_keeps_hardest_and_warns():
    buf = HardSampleBuffer(capacity=4)
    buf.push(*_batch([3.0, 1.0, 4.0, 2.0]))
    small = HardSampleBuffer(capacity=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small.load_state_dict(buf.state_dict())
    assert any("capacity" in str(w.message) for w in caught)
    assert small.ids == ["item0", "item2"]  # H 3 and 4, original slot order


def test_memory_bytes_counts_latents():
    buf = HardSampleBuffer(capacity=50)
    assert buf.memory_bytes() == 0
    buf.push(torch.zeros(7, 576, 8), torch.arange(7.0), [str(i) for i in range(7)])
    assert buf.memory_bytes() == 7 * 576 * 8 * 4
    bf = HardSampleBuffer(capacity=50)
    bf.push(torch.zeros(2, 576, 8, dtype=torch.bfloat16), torch.ones(2), ["a", "b"])
    assert bf.memory_bytes() == 2 * 576 * 8 * 2


def test_mine_names_the_inserted_items_by_their_batch_index():
    buf = HardSampleBuffer(capacity=2)
    buf.push(*_batch([2.5], start_id=10))
    latents, h, ids, payload = _batch([1.0, 3.0, 2.0, 4.0, 5.0])
    passed = torch.tensor([True, True, True, True, False])
    stats = buf.mine(latents, h, passed, ids, payload, percentile=0)
    # offered in turn: 1.0 fills the room, 3.0 evicts it, 2.0 is easier than 2.5, 4.0 evicts 2.5;
    # 5.0 failed the filter
    assert stats.inserted == (1, 3) and stats.n_pushed == 2
    assert sorted(buf.ids) == ["item1", "item3"]
    assert buf.mine(latents, h, torch.zeros(5, dtype=torch.bool), ids).inserted == ()
