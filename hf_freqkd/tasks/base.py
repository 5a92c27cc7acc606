"""The :class:`Task` interface and the registry of tasks (``task: <name>`` in a config)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, DataError, MethodOptionsError, ModelError
from ..types import LogitsAndFeatures

_TASKS: dict[str, "Task"] = {}
_TASKS_VIEW: Mapping[str, "Task"] = MappingProxyType(_TASKS)


@dataclass
class TaskData:
    """What a run needs to format and check one task's data (see :meth:`Task.data_functions`).

    ``transform(dataset, image_column, label_column, input_config, training=, augmentation=)`` returns
    the dataset yielding ``pixel_values`` and ``labels``; ``check_labels(dataset, label_column,
    num_classes, split_name)`` raises a :class:`~hf_freqkd.errors.DataError` on a label out of range.
    """

    image_column: str
    label_column: str
    num_classes: int
    transform: Callable[..., Any]
    check_labels: Callable[..., None]


class Task:
    """One prediction task. Subclasses set the class attributes and implement the methods marked so."""

    #: the config's ``task:`` value and the name methods list in their ``tasks``
    name: ClassVar[str]
    #: the Hub's pipeline tag, also the model-index task type of a model card
    pipeline_tag: ClassVar[str]
    #: how messages describe a model of this task ("an image classifier")
    model_kind: ClassVar[str]
    #: the first words of a model card's body ("Image classifier")
    card_title: ClassVar[str]
    #: Trainer evaluation keys (without ``eval_``) a model card reports -> (model-index type, readable name);
    #: top-k accuracies are added by the classification task from the metrics present
    card_metrics: ClassVar[dict[str, tuple[str, str]]] = {}
    #: the value this task's metrics take where they are undefined (COCO's -1 for the AP of a size group
    #: without objects), or None; a model card publishes no such value
    undefined_metric_value: ClassVar[float | None] = None
    #: how a model card names the label term (the ``ce`` method) of a model trained alone
    label_loss: ClassVar[str] = "cross-entropy"
    #: Python lines a model card's usage snippet adds after loading the model: what its forward returns
    card_usage: ClassVar[str] = ""
    #: what transformers' pipeline for this task returns, for a model card's usage snippet
    pipeline_output: ClassVar[str] = "[{'label': 'cat', 'score': 0.93}, ...]: the classes by softmax score"
    #: the rank of the labels of one training row: 0 for a class id, 2 for a (H, W) mask
    label_dims: ClassVar[int]
    #: what the rows must look like, for the message when they do not
    label_hint: ClassVar[str]
    #: a registered network of this task, for messages that suggest one
    example_model: ClassVar[str] = ""
    #: the transformers auto class an exported transformers student of this task loads with, or None when
    #: transformers has no auto class for it; model cards show it
    transformers_auto_class: ClassVar[str | None] = None
    #: True if transformers also loads this task's *timm* exports with that auto class (its TimmWrapper
    #: classes do for image classifiers only)
    transformers_loads_timm_exports: ClassVar[bool] = False
    #: (transformers auto class, class of hf_freqkd/remote_code/modeling_hf_freqkd.py) an export of a network
    #: only hf_freqkd registers names in its ``auto_map`` (see :mod:`hf_freqkd.remote_code`)
    #: None when that code has no class for the task (a user's own task: its exports load with timm)
    remote_code_classes: ClassVar[tuple[str, str] | None] = None
    #: True when evaluation resizes each image to the input size whatever its aspect (timm's "squash" crop
    #: mode, which the export's image processor then uses); False for timm's centre crop
    squashes_images: ClassVar[bool] = False
    #: the ``DataArguments`` fields this task reads and the others do not (segmentation's ``mask_column``,
    #: detection's ``bbox_format``): a run of a task that does not declare one refuses it when it is set
    #: away from its default, naming the task it belongs to (see :meth:`refuse_data_arguments`)
    data_arguments: ClassVar[tuple[str, ...]] = ()
    #: what ``hf-freqkd benchmark quality`` reports: (Trainer evaluation key without ``eval_``, short label),
    #: fractions shown in percent; the first is the headline its "vs ce" column and chart compare. The label
    #: also names the CSV / JSON column: "top-1" -> ``top1``, "pixel accuracy" -> ``pixel_accuracy``
    benchmark_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()

    # -- models ---------------------------------------------------------------------------------

    def matches(self, model: nn.Module) -> bool:
        """True if ``model`` solves this task (implemented by each task)."""
        raise NotImplementedError

    def check_models(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Student and teacher must solve the same task."""
        if teacher is not None and task_for_model(teacher) is not task_for_model(student):
            other = task_for_model(teacher)
            raise ModelError(
                f"the student {type(student).__name__} is {self.model_kind} but the teacher {type(teacher).__name__} "
                f"is {other.model_kind}: both must solve the same task"
            )

    # -- methods --------------------------------------------------------------------------------

    def applies(self, method_class: type) -> bool:
        """True if the method works for this task (the method lists the task in its ``tasks``)."""
        return self.name in getattr(method_class, "tasks", ("classification",))

    def check_methods(self, methods) -> None:
        """Refuse methods that do not apply to this task, naming the ones that do."""
        unsupported = [method.name for method in methods if not self.applies(type(method))]
        if unsupported:
            from ..methods.registry import available_methods

            supported = ", ".join(name for name, cls in available_methods().items() if self.applies(cls))
            raise MethodOptionsError(
                f"method(s) {', '.join(unsupported)} do not apply to {self.name} ({self.model_kind}); "
                f"methods that do: {supported}"
            )

    # -- data -----------------------------------------------------------------------------------

    def check_data_arguments(self, data_args) -> None:
        """Raise a ConfigError for a data argument this task cannot work with; called for the run's task
        when the config is read, before anything is loaded. Nothing to check by default."""

    def refuse_data_arguments(self, data_args, taken: tuple[str, ...] = ()) -> None:
        """In a run of another task, which reads ``taken``: a ConfigError if one of this task's
        :attr:`data_arguments` that the other does not read is set away from its default."""
        import dataclasses

        defaults = {field.name: field.default for field in dataclasses.fields(data_args)}
        own = [name for name in self.data_arguments if name not in taken]
        given = [name for name in own if getattr(data_args, name) != defaults[name]]
        if not given:
            return
        if len(own) == 1:
            raise ConfigError(f"{own[0]} = {getattr(data_args, own[0])!r} applies to task: {self.name}; set task: {self.name} or remove it")
        names = ", ".join(own[:-1]) + f" and {own[-1]}"
        raise ConfigError(f"{names} apply to task: {self.name}; set task: {self.name} or remove them")

    def data_functions(self, train_data, data_args, num_classes: int | None = None) -> TaskData:
        """Columns, class count, transform and label check for ``train_data`` (implemented by each task)."""
        raise NotImplementedError

    def class_names(self, dataset) -> list[str] | None:
        """The class names ``dataset`` declares (its ``datasets.ClassLabel`` label column), or None.

        ``dataset`` is a ``datasets`` split, raw or formatted (a transform keeps the features); any other
        dataset declares none. Tasks whose labels are not a column of class ids override this.
        """
        import datasets

        features = getattr(dataset, "features", None) or {}
        labels = [feature for feature in features.values() if isinstance(feature, datasets.ClassLabel)]
        return list(labels[0].names) if len(labels) == 1 else None

    @staticmethod
    def first_training_labels(dataset) -> torch.Tensor | None:
        """The ``labels`` of the first formatted training row, if there is one to look at."""
        if dataset is None or not hasattr(dataset, "__getitem__") or len(dataset) == 0:
            return None
        labels = dataset[0].get("labels")
        return None if labels is None else torch.as_tensor(labels)

    def check_training_rows(self, dataset) -> None:
        """The first formatted training row must carry labels of this task's layout."""
        labels = self.first_training_labels(dataset)
        if labels is None:
            return
        dims = labels.dim()
        if dims != self.label_dims:
            layout = "a (H, W) mask" if dims == 2 else ("a class id" if dims == 0 else f"{dims}-D labels")
            raise DataError(f"the student is {self.model_kind} but the training rows hold {layout} as labels: {self.label_hint}")

    @property
    def data_collator(self) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Batches rows of ``pixel_values`` and ``labels``; fixed-size tensors for both tasks here."""
        from transformers.data.data_collator import default_data_collator

        return default_data_collator

    # -- training and evaluation ----------------------------------------------------------------

    def random_labels(self, batch: int, image_size: int, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels of a random batch in this task's layout, for timing a training step (benchmark speed)."""
        return torch.randint(0, num_classes, (batch, *([image_size] * self.label_dims)), generator=generator)

    def eval_loss(self, student: LogitsAndFeatures, labels: torch.Tensor) -> torch.Tensor:
        """The student's plain evaluation loss: cross-entropy of its logits in float32 (labels of -100 are ignored)."""
        return nn.functional.cross_entropy(student.logits.float(), labels)

    def compute_metrics(self, num_classes: int, args) -> Callable:
        """The Trainer's ``compute_metrics`` for this task (implemented by each task). It takes
        ``compute_result`` too, for ``batch_eval_metrics`` (:class:`hf_freqkd.metrics.batched.BatchedMetrics`);
        a user's task that returns a plain function gets the Trainer's message when that is set."""
        raise NotImplementedError

    #: the Trainer's ``preprocess_logits_for_metrics``, or None to keep the logits
    preprocess_logits_for_metrics: ClassVar[Callable | None] = None

    def card_metric_names(self, metrics: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """``eval_<key>`` -> (model-index metric type, readable name) for the metrics a card reports."""
        return {f"eval_{key}": names for key, names in self.card_metrics.items()}

    def benchmark_shows(self, key: str, num_classes: int) -> bool:
        """Whether the benchmark's table and chart show the metric ``key`` (of :attr:`benchmark_metrics`)
        for models of ``num_classes`` classes; its CSV and JSON always hold it."""
        return True


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make the task available under ``cls.name`` (``task: <name>`` in configs)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute `name` to register")
    if name in _TASKS and type(_TASKS[name]) is not cls:
        raise ValueError(f"a task named '{name}' is already registered ({type(_TASKS[name]).__qualname__})")
    _TASKS[name] = cls()
    return cls


def available_tasks() -> Mapping[str, Task]:
    """Registered tasks by name: a read-only view that also shows tasks registered later (a user's own)."""
    return _TASKS_VIEW


def get_task(name: str) -> Task:
    """The task registered as ``name``; a ConfigError with a suggestion when there is none."""
    if name not in _TASKS:
        close = difflib.get_close_matches(str(name), list(_TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"task = {name!r} is invalid{hint}: expected one of {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def task_for_model(model: nn.Module) -> Task:
    """The task a network solves. Tasks are asked most specific first, classification last."""
    for task in sorted(_TASKS.values(), key=lambda task: task.name == "classification"):
        if task.matches(model):
            return task
    raise ModelError(f"{type(model).__name__} solves none of the tasks {', '.join(sorted(_TASKS))}")
