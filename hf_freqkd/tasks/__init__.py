"""Tasks as plug-ins: what differs between image classification, semantic segmentation and detection.

Everything task-specific lives in one file per task (``classification.py``, ``segmentation.py``, ``detection.py``),
asked through the :class:`Task` interface: the data transform and collator, the checks that a
student / teacher pair, the methods and the training rows fit the task, the evaluation loss, the
default metrics (local ``evaluate`` modules) and what a model card says. The trainer, the run,
export, model card and benchmarks ask the task; none of them branches on a task name.

Adding a task is one file here with a :class:`Task` subclass decorated with :func:`register_task`,
plus its name in the import line below (see docs/writing-a-task.md).
"""

from .base import Task, TaskData, available_tasks, get_task, register_task, task_for_model
from . import classification, detection, segmentation  # noqa: F401,E402  (registration side effect)

__all__ = ["Task", "TaskData", "available_tasks", "get_task", "register_task", "task_for_model"]
