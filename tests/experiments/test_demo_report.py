"""The demo's report lines, from files a run writes (no training)."""

import json

from unigame.demo import label_validity_line


def test_label_validity_line_reads_the_run_totals(tmp_path):
    counts = {"mined": 200, "mined_valid": 150, "inserted": 40, "inserted_valid": 39, "rejected_valid": 5}
    shares = {"label_valid_mined": 0.75, "label_valid_inserted": 0.975, "label_valid_rejected": 5 / 150}
    (tmp_path / "label_validity.json").write_text(json.dumps({"steps": 300, **shares, **counts}))
    line = label_validity_line(tmp_path)
    assert "97.5% of the 40 buffer insertions" in line
    assert "75.0% of all 200 mined candidates" in line


def test_label_validity_line_is_absent_without_measurements(tmp_path):
    assert label_validity_line(tmp_path) is None  # SFT runs write no file
    empty = {
        "steps": 3,
        "label_valid_mined": None,
        "label_valid_inserted": None,
        "label_valid_rejected": None,
    }
    (tmp_path / "label_validity.json").write_text(json.dumps(empty))
    assert label_validity_line(tmp_path) is None  # token-space candidates: nothing the judge can read
