"""The batch iterator: deterministic order, resumable position, bad records named."""

from __future__ import annotations

import numpy as np
import pytest

from unigame.train.batches import RecordBatches


def test_order_is_deterministic_and_resumable(records):
    a = RecordBatches(records, 6, seed=3)
    first = [next(a).ids for _ in range(7)]  # 32 records / 6 = 5 full batches per epoch: crosses an epoch
    b = RecordBatches(records, 6, seed=3)
    assert [next(b).ids for _ in range(7)] == first
    c = RecordBatches(records, 6, seed=3)
    for _ in range(4):
        next(c)
    resumed = RecordBatches(records, 6, seed=3)
    resumed.load_state_dict(c.state_dict())
    assert [next(resumed).ids for _ in range(3)] == first[4:]
    assert len({i for ids in first[:5] for i in ids}) == 30  # an epoch never repeats a record


def test_batch_content_and_resize(records):
    batch = next(RecordBatches(records, 4, seed=0, image_size=64))
    assert batch.pixels.shape == (4, 3, 64, 64) and batch.pixels.min() >= 0 and batch.pixels.max() <= 1
    by_id = {r.id: r for r in records}
    assert batch.texts == [by_id[i].caption for i in batch.ids]  # the filter's text: the caption
    assert batch.questions == [by_id[i].question for i in batch.ids]


def test_bad_record_is_named(records):
    bad = list(records[:4])
    bad[2] = type(bad[2])(id="train-bad", question="q?", answer="a", image=np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="record 'train-bad' has an image of shape"):
        RecordBatches(bad, 2, seed=0)
    with pytest.raises(ValueError, match="data.batch_size=9 exceeds the 4 training records"):
        RecordBatches(list(records[:4]), 9, seed=0)


def test_a_second_stream_shares_the_images_with_its_own_order_and_position(records):
    main = RecordBatches(records, 4, seed=0)
    next(main)
    extra = main.stream(3, seed=1)
    assert extra._images is main._images  # the image store is shared, not copied
    alone = RecordBatches(records, 3, seed=1)  # the same stream built on its own
    assert [next(extra).ids for _ in range(12)] == [next(alone).ids for _ in range(12)]  # crosses an epoch
    assert main.state_dict()["cursor"] == 4 and extra.state_dict() == alone.state_dict()
    with pytest.raises(ValueError, match="a batch of 33 exceeds the 32"):
        main.stream(33, seed=1)
