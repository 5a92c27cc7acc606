"""The Trainer contract: what each ``transformers.TrainingArguments`` field does in a distillation run.

Every field is in exactly one of two tables:

* :data:`SUPPORTED`: the field works as in transformers; the note says what it does to the
  distillation (the Distiller is the trained model, the teacher stays outside it).
* :data:`REFUSED`: set to a value the run cannot honour, the field is refused when the config is
  read (``DistillationConfig.__post_init__``), before any model, data or file is touched: a
  :class:`~hf_freqkd.errors.ConfigError` naming the field and why (exit code 2 on the command line).

``tests/training/test_contract.py`` enumerates ``dataclasses.fields(TrainingArguments)``: a field
that a new transformers adds fails that test until it is put in one of the tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Refusal:
    """Why a field is refused, and which of its values are.

    ``refuses(value)`` is True for a refused value; by default every value but transformers' default
    (and None / False / empty). ``example`` is a refused value, for the tests and the docs.
    """

    reason: str
    example: Any = True
    refuses: Callable[[Any], bool] | None = None


def _grouping_sampler(value: Any) -> bool:
    return str(getattr(value, "value", value)) in ("group_by_length", "batch_rebalance")


def _other_label_names(value: Any) -> bool:
    return value is not None and list(value) != ["labels"]


def _token_count(value: Any) -> bool:
    return value not in (None, False, "no", "false", "False")


#: field -> what it does in a distillation run (works as in transformers)
SUPPORTED: dict[str, str] = {
    # where and how long
    "output_dir": "the run folder: checkpoints, hf_freqkd_run.json and the exported student/",
    "per_device_train_batch_size": "per process; the teacher sees the same batch",
    "num_train_epochs": "epochs of the training split",
    "max_steps": "optimizer updates; overrides num_train_epochs",
    # optimisation of the Distiller (student + method modules)
    "learning_rate": "one rate for the student and the methods' modules",
    "lr_scheduler_type": "transformers' schedules; replaced by lr_decay_epochs when that is set",
    "lr_scheduler_kwargs": "passed to the schedule",
    "warmup_steps": "learning-rate warm-up (distill_warmup_* ramps the distillation terms instead)",
    "optim": "transformers' optimizers over every trainable Distiller parameter",
    "optim_args": "passed to the optimizer (e.g. momentum=0.9)",
    "weight_decay": "over the parameters weight_decay_on selects",
    "adam_beta1": "Adam's beta1",
    "adam_beta2": "Adam's beta2",
    "adam_epsilon": "Adam's epsilon",
    "gradient_accumulation_steps": "every loss term is a per-batch mean, divided by the steps as the Trainer does",
    "average_tokens_across_devices": "no effect: the distillation loss is a per-batch mean with no token count",
    "max_grad_norm": "clips the Distiller's gradient norm (default 0: no clipping, the research recipes)",
    "label_smoothing_factor": "label smoothing of the ce term (methods.ce.label_smoothing); evaluation loss stays plain cross-entropy",
    # precision and speed
    "bf16": "autocast for student, methods and teacher; float32 master weights; on the CPU without an accelerator",
    "fp16": "autocast with a grad scaler (accelerators only)",
    "bf16_full_eval": "evaluates the Distiller cast to bfloat16",
    "fp16_full_eval": "evaluates the Distiller cast to float16",
    "tf32": "TF32 matmuls on Ampere and newer GPUs",
    "activation_checkpointing": "checkpoints the student's blocks (timm set_grad_checkpointing, transformers "
    "activation_checkpointing_enable); never the frozen teacher",
    "activation_checkpointing_kwargs": "transformers students: passed on (use_reentrant must stay false); timm students take none",
    "gradient_checkpointing": "transformers' deprecated name of activation_checkpointing",
    "gradient_checkpointing_kwargs": "transformers' deprecated name of activation_checkpointing_kwargs",
    "torch_compile": "compiles the Distiller; the teacher too unless teacher_torch_compile is false",
    "torch_compile_backend": "torch.compile backend (implies torch_compile)",
    "torch_compile_mode": "torch.compile mode (implies torch_compile)",
    "torch_empty_cache_steps": "empties the accelerator's cache every N steps",
    # logging and reporting
    "logging_strategy": "when the loss and each weighted term (loss_ce, loss_kd, ...) are logged",
    "logging_steps": "every N updates",
    "logging_first_step": "also log the first update",
    "log_on_each_node": "multi-node logging",
    "logging_nan_inf_filter": "logging only; nonfinite_loss decides what a non-finite step does",
    "log_level": "main process log level",
    "log_level_replica": "other processes' log level",
    "disable_tqdm": "progress bars",
    "report_to": "the Trainer's integrations (tensorboard, wandb, trackio, ...)",
    "run_name": "run name for the integrations",
    "project": "project name for trackio",
    "trackio_space_id": "trackio",
    "trackio_bucket_id": "trackio",
    "trackio_static_space_id": "trackio",
    # evaluation: the student alone, plain task loss and the task's metrics
    "eval_strategy": "evaluates the student (its plain task loss and the task's metrics)",
    "eval_steps": "every N updates",
    "eval_delay": "first evaluation after N epochs or steps",
    "per_device_eval_batch_size": "per process",
    "prediction_loss_only": "skips the metrics",
    "eval_on_start": "one evaluation before training",
    "eval_accumulation_steps": "moves gathered predictions to the CPU every N batches",
    "include_for_metrics": "adds inputs (pixel_values) or losses to what compute_metrics receives; the task metrics ignore them",
    "batch_eval_metrics": "the task's metrics (accuracy, mIoU, COCO mAP) accumulated batch by batch, "
    "equal to the whole-set scores",
    # checkpoints and the Hub
    "save_only_model": "checkpoints without optimizer state (no exact resume)",
    "save_strategy": "Distiller checkpoints (student + method modules), written atomically",
    "save_steps": "every N updates",
    "save_on_each_node": "multi-node checkpoints",
    "save_total_limit": "older checkpoints rotated after the new one is in place",
    "push_to_hub": "pushes the exported student (not the Distiller) at the end",
    "hub_token": "taken out of the config, never pickled into checkpoints",
    "hub_private_repo": "the student's repo visibility",
    "hub_model_id": "the student's repo",
    "hub_strategy": "what is pushed; the student export at the end",
    "hub_always_push": "push even if the previous push has not finished",
    "hub_revision": "branch to push to",
    "load_best_model_at_end": "reloads the best Distiller checkpoint before the student is exported",
    "metric_for_best_model": "an eval_ metric of the task",
    "greater_is_better": "direction of metric_for_best_model",
    "ignore_data_skip": "resume without fast-forwarding the data (not exact then)",
    "restore_callback_states_from_checkpoint": "restores callback states (the clipping count is restored either way)",
    # randomness, devices, data loading
    "full_determinism": "deterministic algorithms, seeded before the models are built",
    "seed": "seeds the student, the methods' modules and the Trainer",
    "data_seed": "seeds sampling and the per-sample augmentation",
    "use_cpu": "trains on the CPU (set by bf16 without an accelerator)",
    "accelerator_config": "Accelerate's dataloader options (split_batches, dispatch_batches, even_batches, ...)",
    "dataloader_drop_last": "drops the last incomplete batch",
    "dataloader_num_workers": "default 0 on the CPU, else min(4, CPUs per process - 1)",
    "dataloader_pin_memory": "off without an accelerator",
    "dataloader_persistent_workers": "default on whenever there are workers",
    "dataloader_prefetch_factor": "batches each worker loads ahead",
    "dataloader_multiprocessing_context": "fork, spawn or forkserver",
    "dataloader_in_order": "False yields batches as workers finish them (augmentation is seeded per sample, so the same views)",
    "remove_unused_columns": "keeps what the batch needs (pixel_values, labels, the teacher cache's view ids)",
    "length_column_name": "read only by the length-grouped samplers, which are refused",
    # data parallelism and sharding (the launcher decides; see docs/scale.md)
    "ddp_find_unused_parameters": "unset: on only when a method declares it leaves parameters unused",
    "ddp_bucket_cap_mb": "DDP gradient buckets",
    "ddp_broadcast_buffers": "DDP buffer broadcast (BatchNorm statistics)",
    "ddp_static_graph": "DDP static graph",
    "ddp_backend": "nccl, gloo, ...",
    "ddp_timeout": "process group timeout",
    "fsdp": "FSDP2 of the Distiller (the teacher stays outside, replicated); FSDP1 refused on the CPU",
    "fsdp_config": "FSDP options (version 2 on the CPU)",
    "deepspeed": "DeepSpeed ZeRO (GPUs; untested), the teacher an inference engine; refused without an accelerator "
    "or without deepspeed installed (hf_freqkd.training.distributed.check_launcher)",
    "debug": "underflow_overflow hooks every Distiller module",
    "skip_memory_metrics": "memory metrics in the Trainer's reports",
    # read by scripts, not by the Trainer
    "do_train": "not read by the Trainer",
    "do_eval": "not read by the Trainer",
    "do_predict": "not read by the Trainer",
    "resume_from_checkpoint": "true (the newest checkpoint in output_dir) or a checkpoint folder",
    "local_rank": "set by the launcher",
}

#: field -> why the run refuses it (and which values)
REFUSED: dict[str, Refusal] = {
    "neftune_noise_alpha": Refusal(
        "NEFTune adds noise to the token embeddings of a language model; an image student has no input embeddings",
        example=5.0,
    ),
    "use_liger_kernel": Refusal("Liger kernels replace layers of language models (RMSNorm, RoPE, the LM-head cross-entropy)"),
    "liger_kernel_config": Refusal("configures the Liger kernels, which are for language models", example={"rope": True}),
    "use_cache": Refusal("the key-value cache of language-model generation; image students have none"),
    "include_num_input_tokens_seen": Refusal(
        "counts the tokens of language-model inputs; an image batch has pixel_values", example="all", refuses=_token_count
    ),
    "train_sampling_strategy": Refusal(
        "the length-grouped samplers batch sequences of similar length; images have one size (random and sequential work)",
        example="group_by_length", refuses=_grouping_sampler,
    ),
    "label_names": Refusal(
        "hf_freqkd's batches always carry their targets as 'labels' (the task's data functions name them)",
        example=["target"], refuses=_other_label_names,
    ),
    "optim_target_modules": Refusal(
        "selects the layers of GaLore / APOLLO low-rank optimizers, untested with the Distiller (and not installed here)",
        example=["attn"],
    ),
    "eval_do_concat_batches": Refusal(
        "the task metrics score the whole evaluation set as one array; set batch_eval_metrics to bound evaluation memory instead",
        example=False, refuses=lambda value: value is False,
    ),
    "eval_use_gather_object": Refusal("gathers predictions that are Python objects; a student's predictions are tensors"),
    "auto_find_batch_size": Refusal(
        "retries training with a halved batch after an accelerator out-of-memory error, changing the distillation's "
        "batch mid-run (untested); set per_device_train_batch_size, or turn on gradient_checkpointing"
    ),
    "enable_jit_checkpoint": Refusal(
        "writes a checkpoint from the SIGTERM handler, untested with hf_freqkd's atomic checkpoints; a killed run resumes "
        "from its last checkpoint (docs/reliability.md)"
    ),
    "parallelism_config": Refusal(
        "tensor and context parallelism need a model with a tensor-parallel plan or sequence inputs; shard the "
        "Distiller with FSDP2 through accelerate launch instead (docs/scale.md)",
        example={"tp_size": 2},
    ),
}


def _default(name: str) -> Any:
    from transformers import TrainingArguments

    field = next(f for f in dataclasses.fields(TrainingArguments) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def is_refused(name: str, value: Any) -> bool:
    """True if ``value`` of the TrainingArguments field ``name`` is one the run refuses."""
    refusal = REFUSED.get(name)
    if refusal is None:
        return False
    if refusal.refuses is not None:
        return bool(refusal.refuses(value))
    return value not in (None, False, "", {}, []) and value != _default(name)


def check_training_arguments(args: Any) -> None:
    """Raise a ConfigError naming the first refused TrainingArguments field set in ``args``, and why."""
    for name, refusal in REFUSED.items():
        value = getattr(args, name, None)
        if is_refused(name, value):
            raise ConfigError(f"{name} = {value!r} is not supported by hf_freqkd: {refusal.reason}")
