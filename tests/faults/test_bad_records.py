"""A local VQAv2-format dataset with 5% bad records trains to completion and names them; an
all-bad one fails before the model is loaded."""

from __future__ import annotations

import json

import pytest

from unigame.data.formats import write_vqav2
from unigame.data.local import BadRecordsError
from unigame.data.splits import build_split
from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.config import DataConfig, GameConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig
from unigame.train.run import train
from unigame.train.run_logging import read_metrics

from ..train.conftest import PaletteScorer


@pytest.fixture
def vqav2(tmp_path):
    files = write_vqav2(build_split("train", 40, 0), tmp_path / "vqav2", split="train2014")
    return files


def _cfg(files, model_path="unused-an-adapter-is-injected", steps=12):
    return TrainConfig(
        model=ModelConfig(path=model_path),
        data=DataConfig(
            source="vqav2",
            questions=str(files.questions_json),
            annotations=str(files.annotations_json),
            images=str(files.images_dir),
            image_size=32,
            batch_size=4,
        ),
        game=GameConfig(filter="none"),
        optim=OptimConfig(steps=steps),
        logging=LoggingConfig(checkpoint_every=0, tensorboard=False, plots=False, progress=False),
    )


def test_five_percent_bad_records_train_to_completion_and_are_named(tmp_path, vqav2, make_janus):
    questions = json.loads(vqav2.questions_json.read_text())
    rows = questions["questions"]
    assert len(rows) == 40
    rows[3]["question"] = ""  # an empty question
    lone = [r for r in rows if sum(o["image_id"] == r["image_id"] for o in rows) == 1][0]
    image = vqav2.images_dir / f"COCO_train2014_{lone['image_id']:012d}.png"
    image.write_bytes(image.read_bytes()[:40])  # a truncated image file
    vqav2.questions_json.write_text(json.dumps(questions))
    bad_ids = {str(rows[3]["question_id"]), str(lone["question_id"])}

    trainer = UniGameTrainer(_cfg(vqav2), tmp_path / "run", make_janus(), PaletteScorer())
    with pytest.warns(
        UserWarning, match=r"data: 2 bad record\(s\) left out of 40 \(ids: .*\); each with its reason in"
    ):
        trainer.setup()
    trainer.train()
    trainer.cleanup()
    assert trainer.step == 12 and len(trainer.records) == 38
    assert read_metrics(tmp_path / "run" / "metrics.csv")["step"].tolist() == list(range(1, 13))
    listed = [json.loads(line) for line in (tmp_path / "run" / "bad_records.jsonl").read_text().splitlines()]
    assert {row["id"] for row in listed} == bad_ids
    assert {row["problem"].split(" (")[0] for row in listed} == {
        "field 'question': empty",
        "field 'image': cannot decode image",
    }


def test_an_all_bad_dataset_fails_before_the_model_loads(tmp_path, vqav2):
    for image in vqav2.images_dir.iterdir():
        image.write_bytes(b"\xff\xd8 not really a jpeg")
    not_a_model = tmp_path / "model"
    not_a_model.mkdir()  # exists (passes the path check) but would fail as soon as it is loaded
    with pytest.raises(
        BadRecordsError, match=r"too many bad records, none usable so far: 21 bad of 21 examined"
    ):
        train(_cfg(vqav2, model_path=str(not_a_model)), output=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_paths_are_named_before_anything_loads(tmp_path, vqav2):
    cfg = _cfg(vqav2, model_path=str(tmp_path / "no-model"))
    cfg.data.images = str(tmp_path / "no-images")
    with pytest.raises(
        ValueError, match=r"model.path=.*does not exist(.|\n)*data.images=.*no-images'?: it does not exist"
    ):
        train(cfg, output=str(tmp_path / "run"))
