"""``DistillationTrainer``: ``transformers.Trainer`` with a frozen teacher and pluggable loss methods.

It takes the pieces :func:`hf_freqkd.factory.build_distillation` builds (the trainable Distiller,
the frozen teacher, the task) and overrides ``compute_loss`` (one teacher no-grad pass + the
Distiller's forward) and ``log`` (each loss term as its own scalar), plus ``create_scheduler`` for
the CIFAR recipes' step decay. Optimisation, mixed precision, gradient accumulation, data-parallel
wrapping, checkpointing and resuming stay the Trainer's; atomic checkpoints, the non-finite loss
guard and formatted datasets are the shared pieces of :mod:`hf_freqkd.training`.
"""

from __future__ import annotations

import bisect
import copy
import logging
import os
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .config import DistillationConfig
from .data.seeding import AugmentationEpochCallback, dataset_seeding
from .distiller import DistillerOutput
from .errors import ConfigError, TrainingError
from .class_names import resolve_class_names
from .factory import DistillationParts, build_distillation, check_finite_weights
from .models import FrozenTeacher
from .output_dir import STUDENT_EXPORT_DIR, check_output_dir, resolve_resume, training_settings, write_record
from .push import HubSettings
from .training import AtomicCheckpoints, FormattedDatasets, GradientClippingCount, GradientClippingMonitor, LossTermMeans, NonFiniteLossGuard
from .training.distributed import (
    StudentSkeleton, fsdp_on_cpu, fsdp_version, full_state_dict, is_sharded, make_scalars_shardable, shard_for_inference, student_state,
)
from .tune.trainer_search import HyperparameterSearch, student_from_model_init

logger = logging.getLogger(__name__)


class DistillationTrainer(AtomicCheckpoints, NonFiniteLossGuard, GradientClippingMonitor, FormattedDatasets, HyperparameterSearch, Trainer):
    """Train ``model`` (the student) to imitate ``teacher`` with the methods in ``args.methods``.

    Args:
        model (`nn.Module`, `str` or `DistillationParts`): the student: a timm or transformers classifier,
            a segmentation network (:mod:`hf_freqkd.models.segmentation`), or a source string for
            :func:`hf_freqkd.models.load_model`; or the pieces :func:`hf_freqkd.factory.build_distillation`
            already built (then ``teacher`` and ``args.methods`` are not used).
        teacher (`nn.Module` or `str`, *optional*): the teacher; defaults to ``args.teacher_model``.
            Not needed when every method is label-only (``ce``).
        args (`DistillationConfig`): training arguments and distillation settings. Left unchanged
            until everything is valid; then the Hub settings are taken out of it (see :mod:`hf_freqkd.push`).
            ``ddp_find_unused_parameters`` left unset becomes, in the trainer's own copy of ``args``,
            whether a method leaves parameters unused (:attr:`~hf_freqkd.distiller.Distiller.leaves_parameters_unused`).
        train_dataset / eval_dataset: datasets yielding ``pixel_values`` and ``labels`` (see
            :func:`hf_freqkd.data.with_image_transform`).
        data_collator, compute_metrics: default to the task's (:mod:`hf_freqkd.tasks`): top-1 and top-k
            accuracy for classifiers, mIoU, pixel accuracy and mean class accuracy for segmentation networks.
        task (`Task` or `str`, *optional*): the task (:mod:`hf_freqkd.tasks`), e.g. a config's ``task:``;
            by default the task the student solves.
        class_names (`list[str]`, *optional*): the classes' names in class-id order, written to the exported
            ``config.json`` and model card; by default read from ``train_dataset``'s ``ClassLabel`` feature
            (see :mod:`hf_freqkd.class_names`). A teacher that names its classes must name these.
        model_init (`Callable`, *optional*): returns a new student, for :meth:`hyperparameter_search`, which
            rebuilds the distillation around each trial's student (:mod:`hf_freqkd.tune.trainer_search`).
        Every other argument is passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: nn.Module | str | DistillationParts | None = None,
        teacher: nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        compute_metrics=None,
        task=None,
        class_names=None,
        **kwargs: Any,
    ):
        if args is None:
            args = DistillationConfig(output_dir="trainer_output")
        if not isinstance(args, DistillationConfig):
            raise ConfigError(f"args must be a DistillationConfig, got {type(args).__name__}")
        # Checked on a copy: the caller's args change only once everything below is valid.
        HubSettings.take_from(copy.copy(args))
        model = student_from_model_init(model, kwargs.get("model_init"))  # hyperparameter_search: a student per trial
        parts = self._distillation_parts(model, teacher, args, train_dataset, task)
        task = parts.task
        #: the classes' names, exported with the student (hf_freqkd.class_names); None when nothing names them
        self.class_names = resolve_class_names(
            class_names, train_dataset, task, parts.student, parts.teacher.model if parts.teacher is not None else None, parts.num_classes
        )
        if task.preprocess_logits_for_metrics is not None:
            kwargs.setdefault("preprocess_logits_for_metrics", task.preprocess_logits_for_metrics)
        # The Trainer's own push would upload the Distiller (student + method modules) and pickle
        # hub_token into checkpoints: the Hub settings leave args; push_to_hub below pushes the student.
        self.hub_settings = HubSettings.take_from(args)
        if args.ddp_find_unused_parameters is None:
            # transformers has DDP search every step's autograd graph for parameters without a gradient
            # in any model that is not a PreTrainedModel (the Distiller is not one), and DDP warns when
            # the search finds none. The methods know whether a step can leave one unused. A copy:
            # the caller's args may serve another run, of other methods.
            args = copy.copy(args)
            args.ddp_find_unused_parameters = parts.distiller.leaves_parameters_unused
        if getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing:
            from .models.activation_checkpointing import check_activation_checkpointing

            check_activation_checkpointing(parts.student, getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs)
        # The ce term smooths the labels (DistillationConfig put label_smoothing_factor there); the
        # Trainer's own label smoother would read a model config the Distiller has not, and never run.
        label_smoothing = args.label_smoothing_factor
        if label_smoothing:
            args = copy.copy(args)
            args.label_smoothing_factor = 0.0
        output_dir_is_new = not os.path.exists(args.output_dir)
        super().__init__(
            model=parts.distiller,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator or task.data_collator,
            compute_metrics=compute_metrics or task.compute_metrics(parts.num_classes, args),
            **kwargs,
        )
        self.args.label_smoothing_factor = label_smoothing
        self.task = task
        # Every term is a per-batch mean: the Trainer divides by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self.teacher = self._prepare_teacher(parts.teacher) if parts.teacher is not None else None
        #: a sharded run's student architecture, into which the main process gathers the weights to export
        self._export_skeleton = StudentSkeleton(parts.student) if is_sharded(self.accelerator) and self.is_world_process_zero() else None
        if is_sharded(self.accelerator):
            make_scalars_shardable(parts.distiller)
        seeding = dataset_seeding(train_dataset)
        if seeding is not None:
            seeding.seed = args.data_seed if args.data_seed is not None else args.seed
            self.add_callback(AugmentationEpochCallback(seeding))
        self._term_means = LossTermMeans()
        self.add_callback(GradientClippingCount())  # stateful: a resumed run counts the steps before the resume
        self._updates_per_epoch: int | None = None
        self._logged_at = (0, 0)  # (global step, skipped steps) at the last training log
        #: what the run needs from ``args.teacher_cache`` and the cache once open (see hf_freqkd.teacher_cache)
        try:
            self.teacher_cache_plan = self._teacher_cache_plan(parts) if args.teacher_cache else None
            self.teacher_cache = self.teacher_cache_plan.open() if self.teacher_cache_plan is not None else None
        except ConfigError:
            # The plan needs the Trainer (its data loader counts the epochs), which made output_dir:
            # a refused run leaves no empty folder behind.
            if output_dir_is_new and os.path.isdir(args.output_dir) and not os.listdir(args.output_dir):
                os.rmdir(args.output_dir)
            raise
        #: What ``output_dir/hf_freqkd_run.json`` and the model card say about this run; the command
        #: line replaces ``config`` and ``settings`` with the full YAML config (student and data too).
        self.run_record: dict[str, Any] = self._initial_run_record(parts)
        logger.info(
            "student %s: %.3f M parameters; methods %s add %d trainable parameters",
            type(parts.student).__name__,
            sum(p.numel() for p in parts.student.parameters()) / 1e6,
            ", ".join(parts.distiller.methods),
            parts.distiller.trainable_method_parameters(),
        )

    def create_accelerator_and_postprocess(self) -> None:
        # Accelerate drops an FSDP2 plugin in CPU processes; hf_freqkd.training.distributed keeps it.
        with fsdp_on_cpu(fsdp_version(self.args) == 2 and self.args.use_cpu):
            super().create_accelerator_and_postprocess()
        #: bf16 / fp16 under FSDP2 through autocast, as with DDP or one process (float32 master weights and the
        #: float32 FFTs and wavelets of the methods inside), not through FSDP2 casting the parameters
        self._autocast_sharded = self.is_fsdp_enabled and fsdp_version(self.args) == 2 and self.accelerator.mixed_precision in ("bf16", "fp16")
        if self._autocast_sharded:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            self.accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy()

    def compute_loss_context_manager(self):
        stack = super().compute_loss_context_manager()
        if self._autocast_sharded:  # Accelerate wraps the forward of DDP's and one process's model in autocast, not FSDP2's
            stack.enter_context(self.accelerator.autocast())
        return stack

    def _prepare_teacher(self, teacher: FrozenTeacher) -> nn.Module:
        """Inference-only preparation: device placement (under FSDP too, where Accelerate leaves models
        where they are) and mixed precision, no DDP or FSDP wrapper; compiled per teacher_torch_compile."""
        from accelerate.utils import DistributedType, is_compiled_module

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            from .training.distributed import prepare_deepspeed_teacher

            return prepare_deepspeed_teacher(teacher, self.accelerator)  # an inference engine, as TRL's trainers do
        if self.args.teacher_sharding:  # an FSDP2 run (DistillationConfig checked it)
            shard_for_inference(teacher)
        teacher = self.accelerator.prepare_model(teacher, device_placement=not self.args.teacher_sharding, evaluation_mode=True)
        compile_teacher = self.args.torch_compile if self.args.teacher_torch_compile is None else self.args.teacher_torch_compile
        if is_compiled_module(teacher) and not compile_teacher:
            teacher = teacher._orig_mod  # Accelerate compiles every prepared model when torch_compile is set
        elif compile_teacher and not is_compiled_module(teacher):
            teacher = torch.compile(teacher, backend=self.args.torch_compile_backend or "inductor", mode=self.args.torch_compile_mode)
        return teacher

    @staticmethod
    def _distillation_parts(model, teacher, args: DistillationConfig, train_dataset, task=None) -> DistillationParts:
        if isinstance(model, DistillationParts):
            if teacher is not None:
                raise ConfigError("pass the teacher to build_distillation, not next to the parts it built")
            model.task.check_training_rows(train_dataset)
            return model
        if model is None:
            raise ConfigError("DistillationTrainer needs a student: pass model=<nn.Module or model name>")
        # Seed before anything is built here (a student or teacher given by name, the methods' modules);
        # Trainer.__init__ seeds too, but only after all of that exists.
        set_seed_for(args)
        return build_distillation(model, teacher, args.methods, train_dataset=train_dataset, args=args, task=task)

    # ------------------------------------------------------------------------------------------
    # The teacher cache

    def _teacher_cache_plan(self, parts: DistillationParts):
        """What this run needs from ``args.teacher_cache``; a ConfigError when the run cannot use a cache."""
        from .data.loading import ImageClassificationTransform
        from .teacher_cache import CacheIdentity, CachePlan, dataset_digest, dataset_transform, planned_epochs, transform_description, weights_digest

        path = self.args.teacher_cache
        transform = dataset_transform(self.train_dataset)
        if parts.task.name != "classification" or not isinstance(transform, ImageClassificationTransform):
            raise ConfigError(
                f"teacher_cache = '{path}' needs a classification run whose training set is formatted by "
                f"hf_freqkd.data.with_image_transform (task here: {parts.task.name}); unset teacher_cache"
            )
        from .data.seeding import ROW_INDEX_COLUMN

        if ROW_INDEX_COLUMN not in (self.train_dataset.column_names or []):
            # Without row indices a batch cannot say which cached views it holds.
            raise ConfigError(
                f"teacher_cache = '{path}' needs a training set formatted with with_image_transform(..., training=True), "
                "which numbers its rows (this one was formatted for evaluation); format it for training, or unset teacher_cache"
            )
        features = list(parts.teacher.layers) if parts.teacher is not None else []
        stored = self.args.teacher_cache_layers
        if stored is not None:
            missing = [name for name in features if name not in stored]
            if missing:
                raise ConfigError(
                    f"teacher_cache_layers = {stored} lacks {', '.join(missing)}, which the methods read; add them, or unset teacher_cache_layers"
                )
            # An unknown layer fails here, before any training or writing, naming the model's layers.
            FrozenTeacher(parts.teacher.model, stored).remove_hooks()
        elif features and not self.args.teacher_cache_features:
            methods = ", ".join(name for name in parts.distiller.methods if name != "ce")
            raise ConfigError(
                f"teacher_cache is set and the methods ({methods}) read the teacher's features {', '.join(features)}, "
                "which the cache stores only with teacher_cache_features: true; set it (a larger cache), or unset teacher_cache"
            )
        seeding = transform.seeding
        identity = CacheIdentity(
            teacher=weights_digest(parts.teacher.model),
            dataset=dataset_digest(self.train_dataset),
            transform=transform_description(transform),
            seed=seeding.seed if seeding is not None else None,
            epochs=planned_epochs(self.args, self._count_updates_per_epoch()) if seeding is not None else 1,
        )
        transform.emit_view_ids = True
        return CachePlan(
            path=Path(path), identity=identity, augmented=seeding is not None, features=features, stored_features=stored,
            dtype=self.args.teacher_cache_dtype, max_bytes=self.args.teacher_cache_max_gb * 2**30,
        )

    def build_teacher_cache(self):
        """Build ``args.teacher_cache`` if missing (the main process first; the others then open it)."""
        from .teacher_cache import VIEW_EPOCH, VIEW_ROW, build_teacher_cache

        if self.teacher_cache_plan is None:
            raise ConfigError("build_teacher_cache needs teacher_cache set in the run's config")
        if self.teacher_cache is None:
            seeding = dataset_seeding(self.train_dataset)

            def set_epoch(epoch: int) -> None:
                if seeding is not None:
                    seeding.epoch = epoch

            def collate(rows):
                batch = self.data_collator(rows)
                return {key: value for key, value in batch.items() if key not in (VIEW_ROW, VIEW_EPOCH, "labels")}

            plan = self.teacher_cache_plan
            # A cache storing more layers than this run reads is built by a teacher hooked on all of them.
            teacher = self.teacher
            if plan.stored_features is not None and list(plan.stored_features) != list(self.teacher.layers):
                teacher = FrozenTeacher(self.teacher.model, plan.stored_features, as_maps=self.teacher.as_maps)
            with self.accelerator.main_process_first():
                epoch = seeding.epoch if seeding is not None else 0
                try:
                    self.teacher_cache = build_teacher_cache(
                        plan, teacher, self.train_dataset, set_epoch, collate,
                        batch_size=max(self.args.per_device_eval_batch_size, self.args.per_device_train_batch_size),
                        num_workers=self.args.dataloader_num_workers, log=print if self.is_world_process_zero() else logger.debug,
                    )
                finally:
                    set_epoch(epoch)
                    if teacher is not self.teacher:
                        teacher.remove_hooks()
        return self.teacher_cache

    # ------------------------------------------------------------------------------------------
    # Training

    def distill_warmup_factor(self) -> float:
        """``min(step / warmup_steps, 1)`` for the optimizer step being computed (first step = 1)."""
        steps = float(self.args.distill_warmup_steps)
        if self.args.distill_warmup_epochs:
            steps = self.args.distill_warmup_epochs * self._count_updates_per_epoch()
        if steps <= 0:
            return 1.0
        return min((self.state.global_step + 1) / steps, 1.0)

    def _count_updates_per_epoch(self) -> int:
        if self._updates_per_epoch is None:
            rows_per_process = math.ceil(len(self.train_dataset) / self.args.world_size)
            batch = self.args.per_device_train_batch_size
            batches = rows_per_process // batch if self.args.dataloader_drop_last else math.ceil(rows_per_process / batch)
            self._updates_per_epoch = max(batches // self.args.gradient_accumulation_steps, 1)
        return self._updates_per_epoch

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if not self.args.lr_decay_epochs:
            return super().create_scheduler(num_training_steps, optimizer)
        # The CIFAR distillation recipes decay the rate in steps at fixed epochs; transformers has no such schedule.
        updates_per_epoch = self._count_updates_per_epoch()
        milestones = [round(epoch * updates_per_epoch) for epoch in self.args.lr_decay_epochs]
        rate = self.args.lr_decay_rate
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer if optimizer is not None else self.optimizer,
            lambda step: rate ** bisect.bisect_right(milestones, step),
        )
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        labels = inputs.get("labels")
        if model.training and labels is not None:
            teacher_logits = teacher_features = None
            if self.teacher_cache is not None:
                from .teacher_cache import VIEW_EPOCH, VIEW_ROW

                cached = self.teacher_cache.read(
                    inputs[VIEW_EPOCH], inputs[VIEW_ROW], device=pixel_values.device, features=self.teacher_cache_plan.features
                )
                teacher_logits, teacher_features = cached.logits, cached.features
            elif self.teacher is not None:
                with torch.no_grad():
                    teacher_output = self.teacher(pixel_values)
                teacher_logits, teacher_features = teacher_output.logits, teacher_output.features
            outputs, skipped = self.guarded_forward(
                model,
                lambda: model(
                    pixel_values=pixel_values,
                    labels=labels,
                    teacher_logits=teacher_logits,
                    teacher_features=teacher_features,
                    warmup_factor=self.distill_warmup_factor(),
                ),
                lambda outputs: outputs.loss_terms,
            )
            if skipped:
                loss = self.zero_loss(model)
                return (loss, DistillerOutput(loss=loss, logits=outputs.logits)) if return_outputs else loss
            self._term_means.add(outputs.loss_terms)
        else:
            outputs = model(pixel_values=pixel_values, labels=labels)
        loss = outputs.loss
        # Only loss and logits go back: the Trainer's prediction loop treats other fields as logits.
        return (loss, DistillerOutput(loss=loss, logits=outputs.logits)) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs (they carry "loss") also get the mean of each weighted term since the last log.
        if "loss" in logs:
            logs.update(self._term_means.pop_means(self.accelerator))
        if "loss" in logs:
            steps, skipped = self.state.global_step - self._logged_at[0], self.skipped_steps - self._logged_at[1]
            if steps > 0 and skipped >= steps:
                # Every update since the last log was skipped: there is no loss to report (the Trainer
                # would show 0.0, its running sum of nothing).
                logs["loss"] = float("nan")
            self._logged_at = (self.state.global_step, self.skipped_steps)
        if "loss" in logs and self.skipped_steps:
            logs["skipped_steps"] = self.skipped_steps
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------
    # The student

    @property
    def student(self) -> nn.Module:
        """The student network (unwrapped)."""
        return self.accelerator.unwrap_model(self.model).student.model

    # ------------------------------------------------------------------------------------------
    # The run: its folder, its record, its exported student

    def _initial_run_record(self, parts: DistillationParts) -> dict[str, Any]:
        from .config import config_to_dict
        from .model_card import training_recipe
        from .models.loading import model_architecture

        config = config_to_dict(self.args)
        config["student_model"] = model_architecture(parts.student)
        # What the student was built with, so that export_run rebuilds the same network from a checkpoint.
        config["student_model_kwargs"] = dict(getattr(parts.student, "hf_freqkd_model_args", None) or {})
        if parts.teacher is not None and not isinstance(config.get("teacher_model"), str):
            config["teacher_model"] = model_architecture(parts.teacher.model)
        config["task"] = parts.task.name
        return {
            "mode": "distill" if parts.teacher is not None else "teacher",
            "distilled": parts.teacher is not None,
            "status": "created",
            "config": config,
            "settings": training_settings(self.args) | {"student_model": config["student_model"]},
            "training": training_recipe(self.args),
            "num_classes": parts.num_classes,
            "class_names": self.class_names,
            "metrics": {},
        }

    def _write_run_record(self, **updates: Any) -> None:
        self.run_record.update(updates)
        if self.is_world_process_zero():
            write_record(self.args.output_dir, self.run_record)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``, then the student alone in ``output_dir/student`` and the run record beside it.

        Before training, ``output_dir`` is checked (:func:`hf_freqkd.output_dir.check_output_dir`): a
        folder holding another run is refused, and a resumed run must keep the recorded training
        settings. The run record (``hf_freqkd_run.json``) says ``training`` while it runs,
        ``interrupted`` after Ctrl-C, ``failed`` when training raised, ``finished`` once the student is
        exported. The export (:meth:`save_student`) carries the last evaluation, if any; call
        :meth:`save_student` again after :meth:`evaluate` to put a later one on the model card.
        """
        if self.starts_search_trial(trial):  # hyperparameter_search: each trial trains in a folder of its own
            return self.train_search_trial(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        resume = resolve_resume(resume_from_checkpoint)
        check_output_dir(self.args.output_dir, resume, self.run_record["settings"])
        self.accelerator.wait_for_everyone()  # every process has checked before the record is written
        if self.teacher_cache_plan is not None:
            self.build_teacher_cache()
        if resume:
            from transformers.trainer_utils import get_last_checkpoint

            checkpoint = get_last_checkpoint(self.args.output_dir) if resume is True else resume
            self.run_record["resumed_from"] = Path(checkpoint).name if checkpoint else None
            self.restore_clipping_count(checkpoint)
        self._write_run_record(status="training")
        start = time.perf_counter()
        try:
            output = super().train(resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        except KeyboardInterrupt as interrupt:
            from transformers.trainer_utils import get_last_checkpoint

            self._close_progress_bars()
            # Read by the command line for its one-line message (see hf_freqkd.cli).
            interrupt.global_step = self.state.global_step
            interrupt.last_checkpoint = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
            self._write_run_record(status="interrupted", interrupted_at_step=self.state.global_step)
            raise
        except Exception as error:
            self._write_run_record(status="failed", error=str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise
        self.run_record["train_seconds"] = round(time.perf_counter() - start, 3)
        self.run_record["gradient_clipping"] = self.report_clipping().as_record()
        self.save_student(self.last_evaluation())
        return output

    def _close_progress_bars(self) -> None:
        """End the Trainer's progress bars, which only the end of training closes. An interrupted bar
        leaves its line unfinished (it redraws it with carriage returns), so the next message would be
        glued to it, and it is drawn once more when the interpreter exits, after that message."""
        from transformers.trainer_callback import ProgressCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback):
                for bar in (callback.prediction_bar, callback.training_bar):
                    if bar is not None:
                        bar.close()
                callback.prediction_bar = callback.training_bar = None

    def last_evaluation(self) -> dict[str, float]:
        """The metrics of the last evaluation in ``state.log_history`` (``eval_*`` keys), or {}."""
        evaluations = [entry for entry in self.state.log_history if "eval_loss" in entry]
        return {key: value for key, value in (evaluations[-1] if evaluations else {}).items() if key.startswith("eval_")}

    def save_student(self, metrics: dict[str, float] | None = None) -> Path:
        """Export the trained student to ``output_dir/student`` with its model card, and record the run.

        Refuses (``TrainingError``, nothing exported, record ``failed``) a student whose weights are
        not finite, an evaluation whose loss is not finite, and a run whose every update was skipped
        (``nonfinite_loss: skip``): no card reports metrics of such a network. Returns the folder.
        """
        from .export import export_student

        metrics = dict(metrics or {})
        student = self._student_to_export()
        problem = None
        updates = self.state.global_step
        if updates and self.skipped_steps >= updates:
            problem = f"every one of the {updates} updates was skipped as non-finite (nonfinite_loss: skip): nothing was trained"
        else:
            try:
                if student is not None:
                    check_finite_weights(student, "student", f"the run in {self.args.output_dir}")
            except ValueError:
                problem = "the student's final weights hold NaN or inf"
            loss = metrics.get("eval_loss")
            if problem is None and isinstance(loss, float) and not math.isfinite(loss):
                problem = f"the student's evaluation loss is {loss} (its outputs are not finite)"
        if is_sharded(self.accelerator):  # only the main process holds the whole student: its verdict counts
            from accelerate.utils import broadcast_object_list

            problem = broadcast_object_list([problem])[0]
        if problem is not None:
            self._write_run_record(status="failed", error=problem, metrics={})
            raise TrainingError(
                f"{problem}; no student was exported from '{self.args.output_dir}'. Lower the learning rate or the "
                "methods' weights, check the teacher's outputs, or resume from an earlier checkpoint"
            )
        teacher_parameters = sum(p.numel() for p in self.teacher.parameters()) if self.teacher is not None else 0
        self.run_record.update(status="finished", metrics=metrics, teacher_parameters=teacher_parameters)
        folder = Path(self.args.output_dir) / STUDENT_EXPORT_DIR
        if self.is_world_process_zero():
            write_record(self.args.output_dir, self.run_record)
            model_name = (self.hub_settings.repo_id or "").split("/")[-1] or Path(self.args.output_dir).resolve().name
            export_student(student, folder, self.run_record, model_name)
        self.accelerator.wait_for_everyone()
        return folder

    def _student_to_export(self) -> nn.Module | None:
        """The student network to export: :attr:`student`, or in a sharded run (FSDP) its shards gathered
        by every process (each must call this) into a whole network on the main process (None elsewhere)."""
        if not is_sharded(self.accelerator):
            return self.student
        state = student_state(full_state_dict(self.accelerator, self.model))
        return self._export_skeleton.filled(state) if self._export_skeleton is not None else None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the student alone (timm / transformers format + model card) to ``output_dir``.

        The Trainer's own ``save_model`` writes the Distiller (``student.model.*`` and method keys),
        which is what a checkpoint must hold for an exact resume, so checkpoints (``_internal_call``)
        keep it; a user's ``trainer.save_model(folder)`` gets a folder timm or transformers loads.
        """
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        from .export import export_student

        folder = output_dir or self.args.output_dir
        student = self._student_to_export()
        if self.is_world_process_zero():
            export_student(student, folder, self.run_record, Path(folder).resolve().name)
        self.accelerator.wait_for_everyone()

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The parameters ``weight_decay`` applies to: all of them (``weight_decay_on: all``, the research
        code's recipe), or transformers' split (``trainer``: no biases, no normalisation layers)."""
        if getattr(self.args, "weight_decay_on", "trainer") == "all":
            return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        return super().get_decay_parameter_names(model)

    def push_to_hub(self, commit_message: str | None = None, blocking: bool = True, token=None, revision=None, private=None, **kwargs):
        """Export the student alone (weights, config, model card) to ``output_dir/student`` and upload it.

        Replaces the Trainer's push, which would upload the Distiller checkpoint. The repo is
        ``hub_model_id`` (default: the output folder's name); see :mod:`hf_freqkd.push`. Returns the
        commit URL on the main process, None elsewhere.
        """
        from .push import push_trainer_student

        return push_trainer_student(self, commit_message=commit_message, token=token, revision=revision, private=private)


def set_seed_for(args) -> None:
    """Seed Python, NumPy and torch from ``args.seed`` the way ``Trainer`` does."""
    from transformers.trainer_utils import enable_full_determinism, set_seed

    enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
