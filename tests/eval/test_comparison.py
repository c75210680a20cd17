"""`unigame compare RUN ... --output DIR`: compare.md and a self-contained compare.html, rendered in a
real headless browser (Debian's chromium) when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unigame.cli import main
from unigame.eval.comparison import find_training_run, write_comparison
from unigame.eval.report import REQUIRED_KEYS

CHROMIUM = Path("/usr/bin/chromium")
KINDS = ("colour", "count", "existence", "relation", "shape")
PANEL_RGB = (255, 0, 255)  # the stand-in hard-sample panel's colour, looked for in the screenshot
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two series colours


def _record(lora: str | None, clean: float, kinds: list[float]) -> dict:
    record = {key: None for key in REQUIRED_KEYS}
    record |= {
        "schema_version": 1,
        "suite": "shapes",
        "model": {"path": "/models/tiny-janus", "lora": lora, "adapter": "JanusAdapter"},
        "seeds": {"seed": 0},
        "sizes": {},
        "timings_s": {},
        "skipped": {},
        "metrics": {
            "clean_vqa": {"accuracy": clean, "n": 300, "per_kind": dict(zip(KINDS, kinds))},
            "adversarial_split": {"accuracy": clean - 0.05, "per_kind": dict(zip(KINDS[:3], kinds[:3]))},
        },
    }
    return record


def _training_run(run: Path, steps: int, game: bool) -> None:
    run.mkdir(parents=True)
    rows = ["step,ce_clean,ce_hard,ce_adv,eps"]
    for step in range(1, steps + 1):
        adv = f"{2.0 + 0.01 * step},{0.01 + 0.0001 * step}" if game else ","
        rows.append(f"{step},{2.5 / step**0.5},{3.0 / step**0.5},{adv}")
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    if game:
        (run / "plots").mkdir()
        Image.new("RGB", (240, 120), PANEL_RGB).save(run / "plots" / "hard_samples.png")


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    """Evaluations laid out as `unigame reproduce` writes them (`<row>/[seed-N/]eval-test`): base (no
    training run), sft (its training run found beside the evaluation) and unigame (found through the
    LoRA path its evaluation loaded)."""
    layout = {
        "base": (None, 0.62, [1.0, 0.0, 0.79, 0.24, 1.0]),
        "sft/seed-0": (None, 0.82, [1.0, 0.55, 0.95, 0.55, 1.0]),
        "unigame/seed-0": (
            str(tmp_path / "ug-run" / "checkpoints" / "step-00000030" / "lora"),
            0.81,
            [1.0, 0.6, 0.9, 0.5, 1.0],
        ),
    }
    _training_run(tmp_path / "sft" / "seed-0" / "run", 30, game=False)
    _training_run(tmp_path / "ug-run", 30, game=True)
    evals = []
    for name, (lora, clean, kinds) in layout.items():
        folder = tmp_path / name / "eval-test"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(_record(lora, clean, kinds)))
        evals.append(folder)
    return evals


def test_training_runs_are_found_from_the_lora_or_beside_the_evaluation(runs, tmp_path):
    base, sft, unigame = runs
    load = lambda p: json.loads((p / "metrics.json").read_text())  # noqa: E731
    assert find_training_run(base, load(base)) is None
    assert find_training_run(sft, load(sft)) == tmp_path / "sft" / "seed-0" / "run"
    assert find_training_run(unigame, load(unigame)) == tmp_path / "ug-run"


def test_compare_writes_markdown_and_a_self_contained_page(runs, tmp_path, capsys):
    out = tmp_path / "report"
    main(["compare", *map(str, runs), "--output", str(out)])
    printed = capsys.readouterr().out
    header = "| metric | base/eval-test | sft/seed-0/eval-test (Δ vs base/eval-test) | unigame/seed-0/eval-test (Δ vs"
    assert header in printed  # the shortest names that tell the runs apart
    assert "| clean_vqa.accuracy | 0.6200 | 0.8200 (+0.2000) | 0.8100 (+0.1900) |" in printed
    md = (out / "compare.md").read_text()
    for link in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (out / link).is_file(), link
    page = (out / "compare.html").read_text()
    assert "<td>clean_vqa.accuracy</td><td>0.6200</td><td>0.8200 (+0.2000)</td>" in page
    sources = re.findall(r"<img src='([^']*)'", page)
    # two per-kind charts (clean, adversarial), the shared training curves, one hard-sample panel
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)  # nothing is fetched
    assert "no training run found" in page and "Hard-sample panels" in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (apt-get install chromium)")
def test_the_page_renders_in_headless_chromium(runs, tmp_path):
    paths = write_comparison(runs, tmp_path / "report")
    page = tmp_path / "moved" / "compare.html"  # alone in another folder: nothing may point back
    page.parent.mkdir()
    shutil.copy(paths["html"], page)
    shot = tmp_path / "screenshot.png"
    flags = (
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking"
    )
    flags += " --disable-component-update --disable-sync --hide-scrollbars --window-size=1280,4200"
    command = [
        str(CHROMIUM),
        *flags.split(),
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
    ]
    result = subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-3000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - rgb).max(axis=1) <= 8).sum())

    assert count(TAB_BLUE) > 2000 and count(TAB_ORANGE) > 2000  # bars and curves were drawn
    assert count(PANEL_RGB) > 0.5 * 240 * 120  # the embedded hard-sample panel was decoded and shown


def test_compare_takes_run_paths_before_or_after_its_options():
    from unigame.cli import _compare_runs_list

    expected = ["compare", '["a","b,c"]', "--output", "out"]
    assert _compare_runs_list(["compare", "a", "b,c", "--output", "out"]) == expected
    assert _compare_runs_list(["compare", "--output", "out", "a", "b,c"]) == expected
    assert _compare_runs_list(["compare", "--help"]) == ["compare", "--help"]
