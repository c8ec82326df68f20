"""The training process (objective/trainer_process.py), for real: it trains what it is asked, says
bad input as bad input, and a crash in it fails one run, not the next."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from objective.config import TrainConfig
from objective.errors import UserError
from objective.trainer_process import TrainingFailed, TrainingProcess, TrainingProcessDied

TINY = TrainConfig(
    train_subset=512, batch_size=64, conv1_width=8, conv2_width=8, fc_width=32, eval_batch=1000
)


@pytest.fixture
def trainer(mnist_root: Path) -> TrainingProcess:
    process = TrainingProcess()
    assert process.load("cpu", 1, (), str(mnist_root)) == "cpu"
    yield process
    process.close()


def test_it_runs_timed_runs_in_its_own_process(trainer: TrainingProcess) -> None:
    first = trainer.run(TINY, 60.0)
    assert first.steps == 8 and first.seconds > 0 and first.fingerprint["device_type"] == "cpu"
    assert first.fingerprint["threads"] == 1 and trainer.fingerprint["threads"] == 1
    again = trainer.run(TINY, 60.0)
    assert (again.accuracy, again.steps) == (first.accuracy, first.steps)  # one seed, one run
    assert trainer._process is not None and trainer._process.pid != os.getpid()


def test_a_run_that_raises_there_fails_here_with_its_type(trainer: TrainingProcess) -> None:
    with pytest.raises(TrainingFailed, match="not supported between") as raised:
        trainer.run(TINY, "soon")  # type: ignore[arg-type]  # the loop compares its clock with it
    assert raised.value.kind == "TypeError"
    assert trainer.run(TINY, 60.0).steps == 8  # and the process goes on


def test_a_dead_training_process_fails_one_run_and_is_started_again(trainer: TrainingProcess) -> None:
    assert trainer._process is not None
    os.kill(trainer._process.pid, signal.SIGKILL)
    with pytest.raises(TrainingProcessDied, match="exited with code -9"):
        trainer.run(TINY, 60.0)
    assert trainer.run(TINY, 60.0).steps == 8  # a new process, the same device and data


def test_bad_input_there_is_bad_input_here(mnist_root: Path) -> None:
    process = TrainingProcess()
    try:
        with pytest.raises(UserError, match="no usable CUDA GPU"):
            process.load("cuda:0", None, (), str(mnist_root))
    finally:
        process.close()
