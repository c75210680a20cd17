"""SIGINT/SIGTERM during `train`: the step in flight finishes, a checkpoint of it is saved and
named, the process exits 130/143, and `--resume auto` continues from exactly there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from unigame.methods.unigame.trainer import UniGameTrainer
from unigame.train.checkpoint import find_latest_checkpoint, verify_checkpoint
from unigame.train.config import DataConfig, GameConfig, LoggingConfig, ModelConfig, OptimConfig, TrainConfig
from unigame.train.run import train
from unigame.train.run_logging import read_metrics
from unigame.train.signals import stop_on_signals

from ..train.conftest import SMALL

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft 0.21


@pytest.fixture
def janus_dir(tmp_path, text_tokenizer):
    """A tiny random Janus saved like a real model directory (no CLIP: these runs use filter none)."""
    from unigame.models.tiny_janus import build_tiny_janus

    path = tmp_path / "tiny-janus"
    build_tiny_janus(SMALL, seed=0).save_pretrained(path)
    text_tokenizer.save_pretrained(path)
    return path


def _cfg(model: str, steps: int) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(path=model),
        data=DataConfig(train_items=16, batch_size=4),
        game=GameConfig(filter="none"),
        optim=OptimConfig(steps=steps),
        logging=LoggingConfig(
            log_every=1, checkpoint_every=0, tensorboard=False, plots=False, progress=False
        ),
    )


def test_stop_request_is_set_by_the_signal_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert stop and stop.name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == before  # a second SIGTERM would act as usual
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigint_in_process_saves_the_current_step_and_exits_130(tmp_path, janus_dir, monkeypatch, capsys):
    end_step = UniGameTrainer._end_step

    def interrupt_after_step_2(self, metrics, start):
        end_step(self, metrics, start)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 2's bookkeeping finishes

    monkeypatch.setattr(UniGameTrainer, "_end_step", interrupt_after_step_2)
    run = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(SystemExit) as info:
        train(_cfg(str(janus_dir), steps=50), output=str(run))
    assert info.value.code == 130
    checkpoint = run / "checkpoints" / "step-00000002"
    assert f"stopped by SIGINT after step 2; checkpoint saved: {checkpoint}" in capsys.readouterr().out
    verify_checkpoint(checkpoint)
    assert read_metrics(run / "metrics.csv")["step"].tolist() == [1, 2]
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler in force before is restored


def test_sigterm_to_a_training_process_saves_and_resume_auto_continues(tmp_path, janus_dir):
    run = tmp_path / "run"
    args = [
        "--cfg.model.path", str(janus_dir), "--cfg.data.train_items", "16", "--cfg.data.batch_size", "4",
        "--cfg.game.filter", "none", "--cfg.optim.steps", "100000", "--cfg.logging.log_every", "1",
        "--cfg.logging.checkpoint_every", "0", "--cfg.logging.tensorboard", "false",
        "--cfg.logging.plots", "false", "--cfg.logging.progress", "false", "--output", str(run),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "unigame", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").is_file() or len((run / "metrics.csv").read_text().splitlines()) < 3:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no training step within 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    steps = read_metrics(run / "metrics.csv")["step"].tolist()
    last = int(steps[-1])
    assert steps == list(range(1, last + 1)) and last >= 2
    checkpoint = find_latest_checkpoint(run)
    assert checkpoint.name == f"step-{last:08d}"  # the step boundary the signal was caught at
    assert f"stopped by SIGTERM after step {last}; checkpoint saved: {checkpoint}" in out
    verify_checkpoint(checkpoint)

    with pytest.warns(UserWarning, match="optim.steps: 100000 -> "):
        train(_cfg(str(janus_dir), steps=last + 2), resume="auto", output=str(run))
    assert read_metrics(run / "metrics.csv")["step"].tolist() == list(range(1, last + 3))
