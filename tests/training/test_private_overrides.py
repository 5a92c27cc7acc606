"""The private ``transformers.Trainer`` methods hf_freqkd overrides: each still exists with the
parameters the override expects, and no trainer overrides a private method that is not listed.
If this fails after a transformers upgrade, the override silently stopped being called (or is
called with other arguments): re-check hf_freqkd/training/ against the new Trainer."""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from hf_freqkd.prompt_fitting import PromptFittingTrainer
from hf_freqkd.trainer import DistillationTrainer
from hf_freqkd.training import PRIVATE_TRAINER_OVERRIDES


@pytest.mark.parametrize("name", sorted(PRIVATE_TRAINER_OVERRIDES))
def test_private_trainer_method_still_exists_with_the_expected_parameters(name):
    method = getattr(Trainer, name, None)
    assert callable(method), f"transformers.Trainer.{name} is gone"
    assert tuple(inspect.signature(method).parameters) == PRIVATE_TRAINER_OVERRIDES[name]


def test_save_checkpoint_asks_get_output_dir_for_its_folder():
    # AtomicCheckpoints redirects the checkpoint by answering _get_output_dir during _save_checkpoint.
    assert "self._get_output_dir(" in inspect.getsource(Trainer._save_checkpoint)


@pytest.mark.parametrize("trainer_class", [DistillationTrainer, PromptFittingTrainer])
def test_only_the_listed_private_methods_are_overridden(trainer_class):
    overridden = set()
    for klass in trainer_class.__mro__:
        if klass.__module__.startswith("hf_freqkd"):
            overridden |= {
                name for name, value in vars(klass).items()
                if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
            }
    assert overridden <= set(PRIVATE_TRAINER_OVERRIDES), sorted(overridden - set(PRIVATE_TRAINER_OVERRIDES))
    assert {"_save_checkpoint", "_get_output_dir", "_remove_unused_columns"} <= overridden
