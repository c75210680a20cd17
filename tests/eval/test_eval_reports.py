"""metrics.json schema, report files and `compare` deltas."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from unigame.eval.common import SuiteResult
from unigame.eval.report import (
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    build_record,
    compare_runs,
    flatten_metrics,
    load_run,
    write_run,
)


def _record(accuracy: float, suite: str = "shapes") -> dict:
    metrics = {
        "clean_vqa": {"accuracy": accuracy, "n": 10, "per_kind": {"count": accuracy / 2}},
        "pgd": {"clean_accuracy": accuracy, "n": 4, "steps": 2, "eps_8": {"eps": 8 / 255, "accuracy": 0.1}},
        "geneval": {"single_object": 0.5, "overall": 0.5, "strict": {"single_object": 0.25, "overall": 0.25}},
        "consistency": {"score": 0.4},
    }
    result = SuiteResult(
        metrics=metrics,
        sizes={"clean": 10},
        timings_s={"clean_vqa": 0.5},
        panels={"generation": [(np.zeros((8, 8, 3), dtype=np.uint8), "a small red circle")]},
    )
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    return build_record(
        result,
        suite=suite,
        model_path="/models/tiny",
        lora=None,
        adapter_name="JanusAdapter",
        data=None,
        config={"image_size": 32},
        seed=0,
        started=start,
        finished=start + timedelta(seconds=3),
    )


def test_metrics_json_schema_and_reports(tmp_path):
    record = _record(0.75)
    paths = write_run(tmp_path / "run", record, {"generation": [(np.zeros((8, 8, 3), dtype=np.uint8), "x")]})
    on_disk = json.loads(paths["metrics"].read_text())
    assert set(REQUIRED_KEYS) <= set(on_disk) and on_disk["schema_version"] == SCHEMA_VERSION
    assert set(on_disk["versions"]) >= {"torch", "transformers", "unigame"}
    assert on_disk["wall_s"] == 3.0 and on_disk["started_at"].startswith("2025-01-01T00:00:00")
    assert on_disk == load_run(tmp_path / "run") == load_run(paths["metrics"])
    for name in (
        "report.md",
        "report.html",
        "headline.png",
        "pgd.png",
        "geneval.png",
        "panel_generation.png",
    ):
        assert (tmp_path / "run" / name).stat().st_size > 0, name
    markdown = paths["markdown"].read_text()
    assert "| Clean VQA accuracy | 0.7500 | `clean_vqa.accuracy` |" in markdown
    assert "![" in markdown and "pgd.png" in markdown
    assert "data:image/png;base64," in paths["html"].read_text()


def test_load_run_rejects_other_json(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(ValueError, match="missing schema_version"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_run(tmp_path / "nowhere")


def test_flatten_keeps_numeric_leaves_in_order():
    flat = flatten_metrics({"a": {"b": 1, "c": "text", "d": {"e": 0.5}}, "f": True, "g": 2.0})
    assert list(flat.items()) == [("a.b", 1.0), ("a.d.e", 0.5), ("g", 2.0)]


def test_compare_prints_deltas_against_the_first_run(tmp_path):
    write_run(tmp_path / "sft", _record(0.5))
    write_run(tmp_path / "unigame", _record(0.625))
    table = compare_runs([str(tmp_path / "sft"), str(tmp_path / "unigame" / "metrics.json")])
    assert "| metric | sft | unigame (Δ vs sft) |" in table
    assert "| clean_vqa.accuracy | 0.5000 | 0.6250 (+0.1250) |" in table
    assert "| clean_vqa.n | 10 | 10 (+0) |" in table
    assert "| pgd.eps_8.accuracy | 0.1000 | 0.1000 (+0.0000) |" in table
