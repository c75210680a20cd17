"""The evaluation entry points (`evaluate`, `compare`, `generate`) as the CLI calls them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unigame.eval.report import REQUIRED_KEYS
from unigame.eval.run import compare, evaluate, generate, load_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_evaluate_shapes_quick_writes_a_run(tiny_model_dir, tmp_path, capsys):
    record = evaluate(
        "shapes", model=str(tiny_model_dir), output=str(tmp_path / "run"), quick=True, device="cpu"
    )
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(REQUIRED_KEYS) <= set(on_disk) and on_disk["suite"] == "shapes"
    assert on_disk["sizes"]["clean"] == 32 and on_disk["seeds"] == {"seed": 0}
    assert on_disk["config"]["image_size"] == 32 and on_disk["model"]["adapter"] == "JanusAdapter"
    assert on_disk["metrics"] == json.loads(json.dumps(record["metrics"]))
    assert {"report.md", "report.html", "geneval_metadata.jsonl", "panel_unifiedbench.png"} <= {
        p.name for p in run.iterdir()
    }
    assert "Consistency score" in capsys.readouterr().out


def test_unknown_suite_and_missing_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="allowed: shapes, vqav2, advqa, pope, naturalbench, mmmu"):
        evaluate("gqa", output=str(tmp_path))
    with pytest.raises(ValueError, match="--data"):
        evaluate("pope", output=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        evaluate("shapes", model=str(tmp_path / "missing"), output=str(tmp_path))


def test_default_model_is_the_cached_base_and_is_never_trained_implicitly(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIGAME_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match="run `unigame base` first"):
        evaluate("shapes", output=str(tmp_path / "run"), quick=True)


def test_lora_is_loaded_on_top_of_the_base(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = load_model(str(tiny_model_dir), device="cpu")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=base.lora_target_modules(), init_lora_weights=False)
    get_peft_model(base.model, config).save_pretrained(tmp_path / "lora")

    adapter, _ = load_model(str(tiny_model_dir), lora=str(tmp_path / "lora"), device="cpu")
    assert any("lora_A" in name for name, _ in adapter.model.named_modules())
    plain, _ = load_model(str(tiny_model_dir), device="cpu")
    pixels, question = torch.rand(1, 3, 32, 32), ["Is there a red circle?"]
    with torch.no_grad():
        assert not torch.allclose(
            adapter.understanding_loss(pixels, question, ["yes"]),
            plain.understanding_loss(pixels, question, ["yes"]),
        )
    record = evaluate(
        "pope",
        model=str(tiny_model_dir),
        lora=str(tmp_path / "lora"),
        data=str(FIXTURES / "pope"),
        output=str(tmp_path / "run"),
        device="cpu",
    )
    assert record["model"]["lora"] == str(tmp_path / "lora") and "random" in record["metrics"]
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model(str(tiny_model_dir), lora=str(tmp_path), device="cpu")


def test_compare_reads_run_folders(tiny_model_dir, tmp_path, capsys):
    for name in ("a", "b"):
        evaluate(
            "naturalbench",
            model=str(tiny_model_dir),
            data=str(FIXTURES / "naturalbench"),
            output=str(tmp_path / name),
            device="cpu",
        )
    table = compare([str(tmp_path / "a"), str(tmp_path / "b")])
    assert "| g_acc | 0.0000 | 0.0000 (+0.0000) |" in table and table in capsys.readouterr().out


def test_generate_writes_the_geneval_layout(tiny_model_dir, tmp_path):
    folders = generate(
        str(FIXTURES / "geneval/evaluation_metadata.jsonl"),
        model=str(tiny_model_dir),
        output=str(tmp_path),
        images_per_prompt=2,
        device="cpu",
    )
    assert [Path(f).name for f in folders] == [f"{i:05d}" for i in range(6)]
    first = tmp_path / "00000"
    assert json.loads((first / "metadata.jsonl").read_text())["prompt"] == "a photo of a bench"
    assert sorted(p.name for p in (first / "samples").iterdir()) == ["0000.png", "0001.png"]


def test_cli_help_renders_for_each_entry_point():
    from jsonargparse import auto_cli

    for name in ("evaluate", "compare", "generate"):
        with pytest.raises(SystemExit) as exit_info:
            auto_cli([evaluate, compare, generate], args=[name, "--help"], as_positional=False)
        assert exit_info.value.code == 0


def test_cli_compare_takes_run_folders_as_positional_arguments(tiny_model_dir, tmp_path, capsys):
    from unigame.cli import main

    runs = [str(tmp_path / "first,run"), str(tmp_path / "second")]  # a comma must stay part of the path
    for run in runs:
        evaluate(
            "naturalbench",
            model=str(tiny_model_dir),
            data=str(FIXTURES / "naturalbench"),
            output=run,
            device="cpu",
        )
    capsys.readouterr()
    main(["compare", *runs])
    assert "| g_acc | 0.0000 | 0.0000 (+0.0000) |" in capsys.readouterr().out
