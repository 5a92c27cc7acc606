"""Searching methods and their settings: ``hf-freqkd tune`` and ``DistillationTrainer.hyperparameter_search``.

* :mod:`.space`: the search-space syntax, each method's default space, the checks before any trial.
* :mod:`.trainer_search`: the Trainer side, a distillation rebuilt around each trial's student.
* :mod:`.study`: the ``hf-freqkd tune`` engine on Optuna (storage, resume, workers, pruning, failures).
* :mod:`.ray_backend`: the same search on Ray Tune, through transformers' backend.
* :mod:`.report`: trials.csv / trials.md / trials.png and best.yaml.

docs/tune.md describes the command and the config.
"""

from .space import SearchSpace

__all__ = ["SearchSpace"]
