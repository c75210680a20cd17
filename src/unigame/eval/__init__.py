"""Evaluation: exact metrics (`metrics`, pure Python), the ShapesWorld suite, public benchmarks from
local files, the PGD attack, and metrics.json / Markdown / HTML reports.

Exports load lazily so `import unigame.eval.metrics` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SuiteResult": "unigame.eval.common",
    "pgd_attack": "unigame.eval.attacks",
    "pgd_report": "unigame.eval.attacks",
    "DEFAULT_SIZES": "unigame.eval.shapes_suite",
    "QUICK_SIZES": "unigame.eval.shapes_suite",
    "ShapesSizes": "unigame.eval.shapes_suite",
    "geneval_correct": "unigame.eval.shapes_suite",
    "run_shapes_suite": "unigame.eval.shapes_suite",
    "shapes_geneval_prompts": "unigame.eval.shapes_suite",
    "BENCHMARK_SUITES": "unigame.eval.benchmarks",
    "run_benchmark": "unigame.eval.benchmarks",
    "SCHEMA_VERSION": "unigame.eval.report",
    "build_record": "unigame.eval.report",
    "compare_runs": "unigame.eval.report",
    "load_run": "unigame.eval.report",
    "write_run": "unigame.eval.report",
    "SUITES": "unigame.eval.run",
    "compare": "unigame.eval.run",
    "evaluate": "unigame.eval.run",
    "generate": "unigame.eval.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unigame.eval' has no attribute {name!r}")
