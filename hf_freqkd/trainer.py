"""``DistillationTrainer``: ``transformers.Trainer`` with a frozen teacher and pluggable loss methods.

It overrides as little as it can: construction (teacher, feature requests, method modules),
``compute_loss`` (one teacher no-grad pass + the Distiller's forward) and ``log`` (each loss term
as its own scalar). Optimisation, mixed precision, gradient accumulation, data-parallel wrapping,
checkpointing and resuming stay the Trainer's.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import os
import shutil
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.data.data_collator import default_data_collator

from .config import DistillationConfig
from .data.seeding import AugmentationEpochCallback, dataset_seeding
from .distiller import Distiller, DistillerOutput
from .methods.base import DistillationMethod
from .methods.registry import available_methods, build_methods
from .metrics import compute_classification_metrics, compute_segmentation_metrics, segmentation_predictions
from .models.features import BackboneInfo, FeatureExtractor, FrozenTeacher
from .models.loading import load_model, model_num_classes, resolve_input_config
from .models.segmentation import is_segmentation_model
from .push import HubSettings

logger = logging.getLogger(__name__)

# Checkpoints are written here first and renamed into place once complete (see _save_checkpoint).
CHECKPOINT_STAGING_DIR = ".staging-checkpoints"


class DistillationTrainer(Trainer):
    """Train ``model`` (the student) to imitate ``teacher`` with the methods in ``args.methods``.

    Args:
        model (`nn.Module` or `str`): the student: a timm or transformers classifier, a segmentation
            network (:mod:`hf_freqkd.models.segmentation`), or a source string for
            :func:`hf_freqkd.models.load_model`.
        teacher (`nn.Module` or `str`, *optional*): the teacher; defaults to ``args.teacher_model``.
            Not needed when every method is label-only (``ce``).
        args (`DistillationConfig`): training arguments and distillation settings.
        train_dataset / eval_dataset: datasets yielding ``pixel_values`` and ``labels`` (see
            :func:`hf_freqkd.data.with_image_transform`).
        compute_metrics: defaults to top-1 and top-k accuracy through the bundled ``evaluate`` module;
            for segmentation networks to mIoU, pixel accuracy and mean class accuracy (per-pixel
            labels, -100 = ignored; see :func:`hf_freqkd.data.with_segmentation_transform`).
        Every other argument is passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        model: nn.Module | str | None = None,
        teacher: nn.Module | str | None = None,
        args: DistillationConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        data_collator=None,
        compute_metrics=None,
        **kwargs: Any,
    ):
        if args is None:
            args = DistillationConfig(output_dir="trainer_output")
        if not isinstance(args, DistillationConfig):
            raise TypeError(f"args must be a DistillationConfig, got {type(args).__name__}")
        # The Trainer's own push would upload the Distiller (student + method modules) and pickle
        # hub_token into checkpoints: take the Hub settings out of args; push_to_hub below pushes the student.
        self.hub_settings = HubSettings.take_from(args)
        if model is None:
            raise ValueError("DistillationTrainer needs a student: pass model=<nn.Module or model name>")
        # Seed before anything is built here (a student or teacher given by name, the methods' modules);
        # Trainer.__init__ seeds too, but only after all of that exists.
        set_seed_for(args)
        student = load_model(model) if isinstance(model, str) else model
        if isinstance(student, Distiller):
            raise TypeError("pass the student network itself, not a Distiller")
        methods = build_methods(args.methods)
        num_classes = model_num_classes(student)
        teacher_model = self._load_teacher(teacher, args, methods, num_classes)
        if teacher_model is not None and model_num_classes(teacher_model) != num_classes:
            raise ValueError(
                f"teacher has {model_num_classes(teacher_model)} classes but the student has {num_classes}: "
                "both must predict the same label set; use a teacher trained on this dataset (hf-freqkd train-teacher), "
                "or set num_classes if the dataset's class count is wrong"
            )
        check_finite_weights(student, "student", model if isinstance(model, str) else "the student module")
        if teacher_model is not None:
            source = args.teacher_checkpoint or (teacher if isinstance(teacher, str) else args.teacher_model)
            check_finite_weights(teacher_model, "teacher", source or "the teacher module")
        segmentation = self._check_task(student, teacher_model, methods, train_dataset)
        if segmentation:
            # Evaluation keeps the predicted class per pixel, not K scores per pixel.
            kwargs.setdefault("preprocess_logits_for_metrics", segmentation_predictions)
        student_info = BackboneInfo.of(student)
        teacher_info = BackboneInfo.of(teacher_model) if teacher_model is not None else None
        requests = [m.feature_request(student_info, teacher_info) for m in methods]
        student_layers = [name for request in requests for name in request.student]
        teacher_layers = [name for request in requests for name in request.teacher]
        student_extractor = FeatureExtractor(student, student_layers)
        teacher_extractor = FrozenTeacher(teacher_model, teacher_layers) if teacher_model is not None else None
        sample = self._probe_input(student, train_dataset)
        student_shapes, teacher_shapes = self._probe_shapes(sample, student_extractor, teacher_extractor)
        for method in methods:
            method.build(student_shapes, teacher_shapes, num_classes)
        distiller = Distiller(student_extractor, methods)

        super().__init__(
            model=distiller,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=data_collator or default_data_collator,
            compute_metrics=compute_metrics or self._default_metrics(segmentation, num_classes, args),
            **kwargs,
        )
        # Every term is a per-batch mean: the Trainer divides by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        # Inference-only preparation: device placement and mixed precision, no DDP wrapper.
        self.teacher = (
            self.accelerator.prepare_model(teacher_extractor, evaluation_mode=True) if teacher_extractor is not None else None
        )
        seeding = dataset_seeding(train_dataset)
        if seeding is not None:
            seeding.seed = args.data_seed if args.data_seed is not None else args.seed
            self.add_callback(AugmentationEpochCallback(seeding))
        self._term_means = LossTermMeans()
        self._updates_per_epoch: int | None = None
        # Numerical guard (args.nonfinite_loss): the current micro-batch / optimizer update is skipped.
        self._skip_batch = False
        self._skip_update = False
        self.skipped_steps = 0
        logger.info(
            "student %s: %.3f M parameters; methods %s add %d trainable parameters",
            type(student).__name__,
            sum(p.numel() for p in student.parameters()) / 1e6,
            ", ".join(self.model.methods),
            distiller.trainable_method_parameters(),
        )

    # ------------------------------------------------------------------------------------------
    # Construction helpers

    @staticmethod
    def _load_teacher(
        teacher, args: DistillationConfig, methods: list[DistillationMethod], num_classes: int
    ) -> nn.Module | None:
        needing = [m.name for m in methods if m.uses_teacher]
        if not needing:
            return None
        teacher = teacher if teacher is not None else args.teacher_model
        if teacher is None:
            raise ValueError(f"method(s) {', '.join(needing)} need a teacher: set teacher_model in the config or pass teacher=")
        if isinstance(teacher, str):
            # An architecture name builds a head for the student's classes (its checkpoint must fit);
            # saved folders and pretrained weights keep their own head, checked against the student.
            builds_head = not (os.path.isdir(teacher) or args.teacher_pretrained)
            teacher = load_model(
                teacher,
                num_classes=num_classes if builds_head else None,
                checkpoint=args.teacher_checkpoint,
                pretrained=args.teacher_pretrained,
                model_kwargs=args.teacher_model_kwargs,
                trust_remote_code=args.trust_remote_code,
            )
        return teacher

    @staticmethod
    def _check_task(student: nn.Module, teacher: nn.Module | None, methods: list[DistillationMethod], train_dataset) -> bool:
        """True for segmentation (a class per pixel). Student, teacher, methods and labels must agree."""
        segmentation = is_segmentation_model(student)
        kind = {True: "a segmentation network (a class per pixel)", False: "an image classifier"}
        if teacher is not None and is_segmentation_model(teacher) != segmentation:
            raise ValueError(
                f"the student {type(student).__name__} is {kind[segmentation]} but the teacher {type(teacher).__name__} "
                f"is {kind[not segmentation]}: both must solve the same task"
            )
        if segmentation:
            unsupported = [m.name for m in methods if not m.supports_segmentation]
            if unsupported:
                supported = ", ".join(name for name, cls in available_methods().items() if cls.supports_segmentation)
                raise ValueError(
                    f"method(s) {', '.join(unsupported)} work on image-level logits (B, K) and do not support segmentation "
                    f"networks, whose logits are (B, K, H, W); methods that do: {supported}"
                )
        if train_dataset is not None and hasattr(train_dataset, "__getitem__") and len(train_dataset) > 0:
            labels = train_dataset[0].get("labels")
            dims = torch.as_tensor(labels).dim() if labels is not None else None
            if dims is not None and (dims == 2) != segmentation:
                layout = "a (H, W) mask" if dims == 2 else f"{dims}-D labels"
                hint = (
                    "set task: segmentation in the config (image + mask columns)"
                    if segmentation
                    else "use a segmentation network, e.g. segfpn_resnet18 (see hf_freqkd.models.segmentation)"
                )
                raise ValueError(f"the student is {kind[segmentation]} but the training rows hold {layout} as labels: {hint}")
        return segmentation

    @staticmethod
    def _default_metrics(segmentation: bool, num_classes: int, args: DistillationConfig):
        if segmentation:
            return functools.partial(compute_segmentation_metrics, num_classes=num_classes)
        return functools.partial(compute_classification_metrics, top_k=args.eval_top_k)

    @staticmethod
    def _probe_input(student: nn.Module, train_dataset) -> torch.Tensor:
        """One real input (the first training row) or, without data, a zero image of the model's size."""
        if train_dataset is not None and hasattr(train_dataset, "__getitem__") and len(train_dataset) > 0:
            return first_training_input(train_dataset)
        return torch.zeros(1, *resolve_input_config(student)["input_size"])

    @staticmethod
    def _probe_shapes(sample, student: FeatureExtractor, teacher: FrozenTeacher | None):
        """Run both networks once (eval mode, no grad) to check the input fits and read feature shapes."""
        shapes = []
        for role, extractor in (("student", student), ("teacher", teacher)):
            if extractor is None:
                shapes.append({})
                continue
            was_training = extractor.training
            extractor.eval()
            device = next(extractor.parameters()).device
            try:
                with torch.no_grad():
                    output = extractor(sample.to(device))
            except Exception as error:  # noqa: BLE001 - report which model and input failed
                raise ValueError(
                    f"the {role} ({type(extractor.model).__name__}) cannot take inputs of shape {tuple(sample.shape[1:])}: "
                    f"{error}. Set image_size to a size the model accepts."
                ) from None
            finally:
                extractor.train(was_training)
            shapes.append({name: value.shape for name, value in output.features.items()})
        return shapes[0], shapes[1]

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
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_output = self.teacher(pixel_values)
                teacher_logits, teacher_features = teacher_output.logits, teacher_output.features
            # A skipped step must leave the model as it was, BatchNorm running statistics included.
            saved_buffers = [b.detach().clone() for b in model.buffers()] if self.args.nonfinite_loss == "skip" else None
            outputs = model(
                pixel_values=pixel_values,
                labels=labels,
                teacher_logits=teacher_logits,
                teacher_features=teacher_features,
                warmup_factor=self.distill_warmup_factor(),
            )
            if self._nonfinite_terms(outputs.loss_terms):
                with torch.no_grad():
                    for buffer, saved in zip(model.buffers(), saved_buffers):
                        buffer.copy_(saved)
                loss = self._zero_loss(model)
                return (loss, DistillerOutput(loss=loss, logits=outputs.logits)) if return_outputs else loss
            self._term_means.add(outputs.loss_terms)
        else:
            outputs = model(pixel_values=pixel_values, labels=labels)
        loss = outputs.loss
        # Only loss and logits go back: the Trainer's prediction loop treats other fields as logits.
        return (loss, DistillerOutput(loss=loss, logits=outputs.logits)) if return_outputs else loss

    def _nonfinite_terms(self, terms: dict[str, torch.Tensor]) -> list[str]:
        """Names of the NaN / inf terms of this batch on any process; stops or marks the update skipped."""
        names = list(terms)
        flags = torch.stack([~torch.isfinite(value.detach()).all() for value in terms.values()]).float()
        if self.accelerator.num_processes > 1:
            # Every process must take the same decision: one skipping its backward alone would hang the others.
            flags = self.accelerator.reduce(flags, reduction="sum")
        bad = [name for name, flag in zip(names, flags.tolist()) if flag > 0]
        if not bad:
            return bad
        step = self.state.global_step + 1
        described = ", ".join(f"'{name}' is {_nonfinite_kind(terms[name])}" for name in bad)
        message = f"loss term{'s' if len(bad) > 1 else ''} {described} at step {step}"
        if self.args.nonfinite_loss == "stop":
            raise NonFiniteLossError(
                f"{message}; the run stopped before applying that step (nonfinite_loss: stop). Lower the learning rate "
                "or the method's weight, check the teacher's outputs, or set nonfinite_loss=skip to skip such steps"
            )
        logger.warning("%s; skipping this optimizer update (nonfinite_loss: skip)", message)
        self._skip_batch = self._skip_update = True
        return bad

    @staticmethod
    def _zero_loss(model: nn.Module) -> torch.Tensor:
        # Zero gradients for every trainable parameter, through no NaN: backward and data-parallel
        # gradient reduction run as usual; training_step then drops the gradients.
        return sum(p.float().sum() for p in model.parameters() if p.requires_grad) * 0.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._skip_batch:
            self._skip_batch = False
            # Left out of the logged loss by the Trainer's logging_nan_inf_filter (on by default).
            loss = torch.full_like(loss, float("nan"))
        if self._skip_update and self.accelerator.sync_gradients:
            # The last micro-batch of the update: drop its gradients, so optimizer.step() changes nothing
            # (optimizers leave parameters without a gradient, and their state, untouched).
            self._skip_update = False
            self.skipped_steps += 1
            scaler = getattr(self.accelerator, "scaler", None)
            for parameter in model.parameters():
                if scaler is not None and parameter.grad is not None:
                    parameter.grad.fill_(float("nan"))  # fp16: the GradScaler's own inf check skips the step
                else:
                    parameter.grad = None
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs (they carry "loss") also get the mean of each weighted term since the last log.
        if "loss" in logs:
            logs.update(self._term_means.pop_means(self.accelerator))
        if "loss" in logs and self.skipped_steps:
            logs["skipped_steps"] = self.skipped_steps
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_checkpoint_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint into a staging folder, then rename it into place.

        The Trainer writes ``checkpoint-N`` file by file; a process killed half-way would leave a
        folder that ``resume_from_checkpoint=True`` picks as the latest and then fails to load. A
        directory rename is atomic, so ``checkpoint-N`` either does not exist or is complete, and
        older checkpoints are rotated away only after the new one is in place.
        """
        run_dir = super()._get_output_dir(trial)
        staging_root = os.path.join(run_dir, CHECKPOINT_STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # left by a run killed while saving: incomplete by construction
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:  # disk full, quota, permissions: say what is safe and how to go on
            if self.args.should_save:
                shutil.rmtree(staged, ignore_errors=True)
            raise _checkpoint_save_error(error, final, run_dir) from None
        finally:
            self._checkpoint_staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its share (e.g. its RNG state)
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and os.path.dirname(os.path.abspath(best)) == os.path.abspath(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            _sync_folder(staged)
            replaced = None
            if os.path.exists(final):  # saving the same step again (resumed from an earlier checkpoint)
                replaced = os.path.join(staging_root, f"replaced-{name}")
                if os.path.exists(replaced):
                    shutil.rmtree(replaced)
                os.rename(final, replaced)
            os.rename(staged, final)
            _sync_folder(run_dir, files=False)
            if replaced is not None:
                shutil.rmtree(replaced)
            self._rotate_final_checkpoints(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate_final_checkpoints(self, run_dir: str) -> None:
        try:
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:  # transformers < 5 has it as a Trainer method
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
            return
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    # ------------------------------------------------------------------------------------------
    # Data

    def _remove_unused_columns(self, dataset, description: str | None = None):
        # A dataset with a transform (with_image_transform) already yields exactly the model's inputs
        # from its raw columns; removing "unused" raw columns would starve the transform.
        if getattr(dataset, "format", {}).get("type") == "custom":
            return dataset
        return super()._remove_unused_columns(dataset, description)

    @property
    def student(self) -> nn.Module:
        """The student network (unwrapped)."""
        return self.accelerator.unwrap_model(self.model).student.model

    def push_to_hub(self, commit_message: str | None = None, blocking: bool = True, token=None, revision=None, private=None, **kwargs):
        """Export the student alone (weights, config, model card) to ``output_dir/student`` and upload it.

        Replaces the Trainer's push, which would upload the Distiller checkpoint. The repo is
        ``hub_model_id`` (default: the output folder's name); see :mod:`hf_freqkd.push`. Returns the
        commit URL on the main process, None elsewhere.
        """
        from .push import push_trainer_student

        return push_trainer_student(self, commit_message=commit_message, token=token, revision=revision, private=private)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf and ``nonfinite_loss`` is ``stop``."""


def _nonfinite_kind(value: torch.Tensor) -> str:
    value = value.detach()
    if torch.isnan(value).any():
        return "nan"
    if torch.isinf(value).any():
        return "inf"
    return "non-finite on another process"


def check_finite_weights(model: nn.Module, role: str, source: str) -> None:
    """Refuse NaN / inf weights now: they would only show up as a NaN loss once training has started."""
    tensors = (*model.named_parameters(), *model.named_buffers())
    bad = [name for name, tensor in tensors if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(
            f"the {role}'s weights hold non-finite values (NaN or inf) in {', '.join(bad[:3])}"
            f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}: '{source}' is corrupted or diverged; "
            f"use another {role} checkpoint"
        )


def _checkpoint_save_error(error: OSError, folder: str, run_dir: str) -> OSError:
    kept = sorted(
        (name for name in os.listdir(run_dir) if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")),
        key=lambda name: int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else -1,
    ) if os.path.isdir(run_dir) else []
    earlier = f"{', '.join(kept)} {'is' if len(kept) == 1 else 'are'} intact" if kept else "there is no earlier checkpoint"
    return OSError(
        error.errno,
        f"could not save checkpoint '{folder}': {error.strerror or error}; the partial checkpoint was removed and "
        f"{earlier}. Free disk space (or choose another output_dir) and resume with resume_from_checkpoint=true",
    )


class LossTermMeans:
    """Running sums of named loss terms between two training logs; their means, averaged over processes."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self._sums[name] = self._sums.get(name, torch.zeros((), device=value.device)) + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def pop_means(self, accelerator) -> dict[str, float]:
        """The mean of each term since the last call (then reset), reduced over processes."""
        means = {
            name: round(float(accelerator.reduce(total / self._counts[name], reduction="mean")), 6) for name, total in self._sums.items()
        }
        self._sums, self._counts = {}, {}
        return means


def first_training_input(dataset) -> torch.Tensor:
    """The first row's ``pixel_values`` as a batch of one; a ValueError if rows are not model inputs."""
    row = dataset[0]
    if "pixel_values" not in row:
        raise ValueError(
            f"training rows must hold 'pixel_values' (and 'labels'); got {', '.join(row)}. "
            "Format the dataset with hf_freqkd.data.with_image_transform."
        )
    return torch.as_tensor(row["pixel_values"]).unsqueeze(0)


def set_seed_for(args) -> None:
    """Seed Python, NumPy and torch from ``args.seed`` the way ``Trainer`` does."""
    from transformers.trainer_utils import enable_full_determinism, set_seed

    enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)


def _sync_folder(folder: str, files: bool = True) -> None:
    """fsync ``folder``'s files and the folder itself, so a rename after this survives a power loss."""
    if files:
        for entry in os.scandir(folder):
            if entry.is_file():
                with open(entry.path, "rb") as handle:
                    os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
