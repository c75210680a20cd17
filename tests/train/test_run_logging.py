"""Metrics to CSV + TensorBoard, resume-safe; PNG plots and hard-sample panels."""

from __future__ import annotations

import math

import pytest
import torch

from unigame.train.run_logging import (
    LabelCounts,
    MetricsLogger,
    hard_sample_panel,
    plot_training_curves,
    read_metrics,
)


def test_csv_and_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path, ["ce_clean", "eps"])
    logger.log(1, {"ce_clean": 2.0, "eps": 0.01})
    logger.log(2, {"ce_clean": float("nan")})  # missing / non-finite -> empty cell
    with pytest.raises(KeyError, match="ce_clen"):
        logger.log(3, {"ce_clen": 1.0})
    logger.close()
    data = read_metrics(tmp_path / "metrics.csv")
    assert data["step"].tolist() == [1, 2] and data["ce_clean"][0] == 2.0 and math.isnan(data["ce_clean"][1])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, ["ce_clean"], tensorboard=False)
    for step in range(1, 6):
        logger.log(step, {"ce_clean": float(step)})
    logger.close()
    resumed = MetricsLogger(tmp_path, ["ce_clean"], tensorboard=False, resume_step=3)
    resumed.log(4, {"ce_clean": 40.0})
    resumed.close()
    data = read_metrics(tmp_path / "metrics.csv")
    assert data["step"].tolist() == [1, 2, 3, 4] and data["ce_clean"].tolist() == [1, 2, 3, 40]


def test_plots_and_panel_are_written(tmp_path):
    logger = MetricsLogger(
        tmp_path, ["eps", "ce_adv", "loss_challenge", "ce_clean", "ce_hard", "loss_understand"], False
    )
    for step in range(1, 5):
        logger.log(step, {"eps": 0.01 + step * 1e-4, "ce_adv": 2.0 + step, "ce_clean": 2.0 - 0.1 * step})
    logger.close()
    written = plot_training_curves(tmp_path / "metrics.csv", tmp_path / "plots")
    assert sorted(p.name for p in written) == ["eps.png", "tug_of_war.png"]
    panel = hard_sample_panel(
        tmp_path / "plots" / "panel.png",
        torch.rand(2, 3, 32, 32),
        torch.rand(2, 3, 32, 32),
        ["Is there a red circle?", "How many squares?"],
        ["yes", "2"],
        ["yes", "2"],
        ["no", "3"],
        [3.2, 2.9],
    )
    for path in [*written, panel]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    token_panel = hard_sample_panel(
        tmp_path / "t.png", torch.rand(1, 3, 8, 8), None, ["q"], ["a"], ["a"], None, [1.0]
    )
    assert token_panel.stat().st_size > 0


def test_hard_sample_panel_with_the_judges_verdicts(tmp_path):
    panel = hard_sample_panel(
        tmp_path / "judged.png",
        torch.rand(2, 3, 32, 32),
        torch.rand(2, 3, 32, 32),
        ["Is there a red circle?", "How many squares are there?"],
        ["yes", "2"],
        ["yes", "2"],
        ["no", "3"],
        [3.2, 2.9],
        judged=[True, False],
    )
    assert panel.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_counts_are_count_weighted_and_resumable():
    counts = LabelCounts()
    first = counts.add(
        torch.tensor([True, True, False, False]), torch.tensor([True, False, True, True]), [0, 2, 3]
    )
    assert first == {"label_valid_mined": 0.5, "label_valid_inserted": 1 / 3, "label_valid_rejected": 0.5}
    second = counts.add(torch.tensor([False, False]), torch.tensor([True, True]), [])
    assert second["label_valid_mined"] == 0.0
    assert math.isnan(second["label_valid_inserted"]) and math.isnan(second["label_valid_rejected"])
    summary = counts.summary()  # 2 of 6 mined, 1 of 3 inserted, 1 of 2 valid rejected
    assert summary["label_valid_mined"] == 2 / 6 and summary["label_valid_inserted"] == 1 / 3
    assert summary["label_valid_rejected"] == 0.5 and summary["mined"] == 6
    restored = LabelCounts()
    restored.load_state_dict(counts.state_dict())
    assert restored == counts
    assert LabelCounts().summary()["label_valid_mined"] is None  # nothing measured: null in JSON
