"""The machine-vision tasks: one :class:`~imutility.tasks.base.Task` per task, chosen once by :func:`get_task`.

Adding a task (say segmentation) means one new module with a ``Task`` subclass registered here; see
``docs/tasks.md``. Generic code (labelling, the study, the benchmark, the CLI) never compares task names.
"""

from __future__ import annotations

from imutility.names import UnknownNameError
from imutility.tasks.base import (
    GROUND_TRUTH,
    PAPER_THRESHOLDS,
    PRISTINE,
    PRISTINE_REFERENCE,
    REFERENCES,
    NetworkColumns,
    Source,
    Task,
    Thresholds,
)
from imutility.tasks.classification import ClassificationTask
from imutility.tasks.detection import DetectionTask
from imutility.tasks.segmentation import SegmentationTask

_TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), DetectionTask(), SegmentationTask())}

#: the task names, in a fixed order (the order studies run them in)
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)


def get_task(name: str) -> Task:
    """The task called ``name`` (close names are suggested on a miss)."""
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownNameError("task", name, _TASKS) from None


def list_tasks() -> list[str]:
    return list(_TASKS)


__all__ = ["GROUND_TRUTH", "PAPER_THRESHOLDS", "PRISTINE", "PRISTINE_REFERENCE", "REFERENCES", "TASK_NAMES",
           "NetworkColumns", "Source", "Task", "Thresholds", "get_task", "list_tasks"]
