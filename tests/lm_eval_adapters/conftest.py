"""A helper that runs lm-eval's Python API on the tiny checkpoints (tests/conftest.py) and tasks."""

from pathlib import Path

import pytest

TASKS = Path(__file__).parent / "tasks"


@pytest.fixture
def evaluate():
    """lm-eval's simple_evaluate on the tiny tasks: evaluate(model, model_args, tasks, **kwargs)."""
    return run_lm_eval


def run_lm_eval(model: str, model_args: dict, tasks: list[str], **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager,
                                   bootstrap_iters=0, **kwargs)
