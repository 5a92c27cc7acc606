"""The launcher's choice (DDP, FSDP, DeepSpeed) checked before anything runs, FSDP2 on CPU processes,
and the full student gathered from a sharded Distiller.

``accelerate launch`` (its flags or a config under ``configs/accelerate/``) decides how the Distiller
is distributed; the training code does not branch on it. Three things need help here:

* FSDP1 (``--use_fsdp`` without ``--fsdp_version 2``) cannot initialise parameters on the CPU:
  Accelerate raises "FSDP parameter initialization with sync_module_states=True is not supported on
  cpu" deep inside the Trainer. :func:`check_launcher` refuses it first, naming ``--fsdp_version 2``.
* Accelerate 1.x turns FSDP on only for accelerator processes: CPU processes (gloo) silently train
  with DDP instead. PyTorch's FSDP2 (``fully_shard``) runs on the CPU, so :func:`fsdp_on_cpu` lets
  Accelerate's FSDP2 path run there: the same sharding, gathering and checkpoints as on GPUs, checked
  on a laptop or in CI (``tests/test_fsdp.py``).
* A sharded Distiller's parameters are shards (DTensors): :func:`full_state_dict` gathers them (all
  processes take part) so that the main process exports the whole student.

DeepSpeed is refused where it cannot run (not installed, or no accelerator: it trains on GPUs).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

#: the accelerate config that shards the Distiller with FSDP2
FSDP2_CONFIG = "configs/accelerate/fsdp2.yaml"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def fsdp_version(args: Any = None) -> int | None:
    """The FSDP version the launcher (or ``args.fsdp`` / ``fsdp_config``) asks for, or None without FSDP."""
    if _flag("ACCELERATE_USE_FSDP"):
        return int(os.environ.get("FSDP_VERSION", "1"))
    if args is not None and getattr(args, "fsdp", None) not in (None, False, "", []):
        config = getattr(args, "fsdp_config", None) or {}
        if isinstance(config, dict):
            return int(config.get("version", config.get("fsdp_version", 2)))
        return 2
    return None


def uses_deepspeed(args: Any = None) -> bool:
    return _flag("ACCELERATE_USE_DEEPSPEED") or bool(getattr(args, "deepspeed", None))


def check_launcher(args: Any) -> None:
    """Refuse, before anything is built, a sharding this machine cannot run. Launched processes on a
    machine without an accelerator train on the CPU (``use_cpu``), the only place they can."""
    from ..config import accelerator_type

    on_cpu = bool(getattr(args, "use_cpu", False)) or accelerator_type() is None
    version = fsdp_version(args)
    if version == 1 and on_cpu:
        raise ConfigError(
            "FSDP1 (accelerate launch --use_fsdp, whose default is --fsdp_version 1) cannot initialise parameters "
            "on the CPU (Accelerate: 'sync_module_states=True is not supported on cpu'): launch with --fsdp_version 2 "
            f"(and --fsdp_sync_module_states false), or with --config_file {FSDP2_CONFIG}"
        )
    if on_cpu and (version == 2 or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        # Without use_cpu, launched processes on a machine with no accelerator would each train alone:
        # with it they join a gloo group (and fsdp_on_cpu keeps Accelerate's FSDP2 for them).
        args.use_cpu = True
    if getattr(args, "teacher_sharding", False) and (version != 2 or getattr(args, "teacher_cache", None)):
        raise ConfigError(
            "teacher_sharding = true shards the teacher with FSDP2: launch with --config_file "
            f"{FSDP2_CONFIG} (or --use_fsdp --fsdp_version 2), and unset teacher_cache, which replaces the teacher"
        )
    if uses_deepspeed(args):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                "DeepSpeed was asked for (accelerate launch --use_deepspeed or deepspeed=...) but is not installed; "
                f"hf_freqkd's DeepSpeed path is untested: shard the Distiller with FSDP2 ({FSDP2_CONFIG}) instead"
            )
        if on_cpu:
            raise ConfigError(
                "DeepSpeed was asked for on a machine without an accelerator: DeepSpeed trains on GPUs, and hf_freqkd's "
                f"DeepSpeed path is untested; shard the Distiller with FSDP2 ({FSDP2_CONFIG}), which runs on the CPU too"
            )


@contextlib.contextmanager
def fsdp_on_cpu(enabled: bool = True):
    """While the Trainer creates its Accelerator: a CPU process group (Accelerate's MULTI_CPU) given an
    FSDP2 plugin keeps it (Accelerate 1.x drops it there and trains with DDP)."""
    if not enabled:
        yield
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and fsdp_plugin.fsdp_version == 2 and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            # Later AcceleratorState() calls copy the process state over their own: it must agree.
            PartialState._shared_state["distributed_type"] = self.distributed_type

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original


def shard_for_inference(teacher) -> None:
    """FSDP2 over a frozen teacher (a :class:`~hf_freqkd.models.FrozenTeacher`): each process keeps 1/N
    of its weights and gathers one block at a time for its forward, freeing it after (no backward)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    names = set(teacher.block_classes())
    for module in reversed(list(teacher.model.modules())):  # blocks before the modules holding them
        if type(module).__name__ in names and module is not teacher.model and not isinstance(module, FSDPModule):
            fully_shard(module, reshard_after_forward=True)
    fully_shard(teacher.model, reshard_after_forward=True)


def teacher_deepspeed_config(training_config: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config of the frozen teacher's inference engine, from the run's (as TRL's distillation
    trainers prepare theirs): ZeRO-3 keeps the teacher partitioned across the processes, lower stages give
    each process the whole teacher (stage 0); no optimizer, no scheduler."""
    import copy

    config = copy.deepcopy(training_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = dict(config.get("zero_optimization") or {})
    if zero.get("stage") != 3:
        zero = {"stage": 0}
    config["zero_optimization"] = zero
    return config


def prepare_deepspeed_teacher(teacher, accelerator):
    """The teacher as a DeepSpeed inference engine in eval mode (GPU runs; untested on this CPU-only machine)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=teacher, config=teacher_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config))
    engine.eval()
    return engine


def is_sharded(accelerator) -> bool:
    """True when each process holds only part of the Distiller's parameters (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def full_state_dict(accelerator, model) -> dict[str, Any]:
    """The whole Distiller's state dict on the main process (CPU tensors; {} elsewhere). Every process
    must call it: the shards are gathered."""
    state = accelerator.get_state_dict(model)
    return {key: value.detach().cpu() for key, value in state.items()} if accelerator.is_main_process else {}


class _OneElement(nn.Module):
    """A 0-d parameter stored with one element: FSDP2 cannot shard 0-d parameters (FAM's branch weights
    are some), and the module still reads a 0-d value."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.reshape(())

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value.reshape(1)


def make_scalars_shardable(model: nn.Module) -> list[str]:
    """Store every 0-d parameter of ``model`` as one element (a parametrization); return their names.
    Done before the optimizer exists: the parameters are new objects."""
    from torch.nn.utils import parametrize

    names = []
    for module_name, module in list(model.named_modules()):
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.dim() == 0:
                parametrize.register_parametrization(module, name, _OneElement())
                names.append(f"{module_name}.{name}" if module_name else name)
    return names


def _plain_key(key: str) -> str:
    """``a.parametrizations.b.original`` (see :func:`make_scalars_shardable`) -> ``a.b``."""
    return re.sub(r"(^|\.)parametrizations\.([^.]+)\.original$", r"\1\2", key)


class StudentSkeleton:
    """A student's architecture without its weights (on the meta device), taken before the Distiller is
    sharded, so that the main process can put the gathered weights back into a whole network and export
    it in its library's format (any student module: nothing is rebuilt by name).

    Non-persistent buffers (index tables and caches that a state dict does not hold) are kept as they are.
    """

    def __init__(self, student):
        import copy

        persistent = set(student.state_dict())
        self.buffers = {name: value.detach().clone() for name, value in student.named_buffers() if name not in persistent}
        # deepcopy takes these meta tensors instead of copying each weight: no second copy of the student.
        memo = {}
        for tensor in (*student.parameters(), *student.buffers()):
            empty = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = nn.Parameter(empty, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else empty
        self.module = copy.deepcopy(student, memo)
        for module in self.module.modules():  # the feature extractor's hooks stay with the trained student
            module._forward_hooks.clear()

    def filled(self, state: dict[str, Any]):
        """The student, on the CPU, holding ``state`` (its own keys, every persistent one)."""
        module = self.module.to_empty(device="cpu")
        shapes = {key: value.shape for key, value in module.state_dict().items()}
        state = {_plain_key(key): value for key, value in state.items()}
        module.load_state_dict({key: value.reshape(shapes[key]) if key in shapes else value for key, value in state.items()}, strict=True)
        for name, value in self.buffers.items():
            owner, _, leaf = name.rpartition(".")
            (module.get_submodule(owner) if owner else module).register_buffer(leaf, value.clone(), persistent=False)
        return module


def student_state(distiller_state: dict[str, Any]) -> dict[str, Any]:
    """The student's keys of a Distiller state dict (``student.model.*``; torch.compile's ``_orig_mod.`` dropped)."""
    prefix = "student.model."
    state = {key.replace("_orig_mod.", ""): value for key, value in distiller_state.items()}
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
