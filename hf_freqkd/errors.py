"""hf_freqkd's exceptions: a user's bad input is told apart from a bug and from a failed upload.

The command line maps them to exit codes (see :mod:`hf_freqkd.cli`):

* :class:`BadInputError` (and its subclasses): the user's config, data, model or options are wrong.
  Raised before any training starts or any file is written wherever it can be detected then (a
  corrupt image met only while training is bad input too); printed as one line, exit code 2.
  Subclasses of ``ValueError`` (and ``FileNotFoundError`` for missing paths), so code that already
  catches those keeps working.
* :class:`TrainingError`: the run started and failed (a non-finite loss, non-finite final weights,
  a checkpoint that could not be written). One line, exit code 1.
* :class:`HubUploadError`: training finished and everything was kept locally, but the upload to the
  Hub failed. The message says what was kept and how to push again; exit code 3.
* Anything else is a bug: the command line prints its traceback and exits 1.
"""

from __future__ import annotations


class FreqKDError(Exception):
    """Base class of every error hf_freqkd raises on purpose."""


class BadInputError(FreqKDError, ValueError):
    """A user's config, data, model or options are wrong; nothing was trained or written."""


class ConfigError(BadInputError):
    """A config key, command-line override or trainer argument is invalid."""


class MethodOptionsError(ConfigError):
    """A distillation method's name or options are invalid."""


class DataError(BadInputError):
    """The dataset cannot be used as given (missing columns, labels out of range, empty split, ...)."""


class ModelError(BadInputError):
    """A student or teacher cannot be loaded or does not fit the task, the data or its partner."""


class MissingPathError(BadInputError, FileNotFoundError):
    """A local file or folder named by the user does not exist."""


class TrainingError(FreqKDError, RuntimeError):
    """The run started and failed (non-finite loss or weights, a checkpoint that could not be saved)."""


class HubUploadError(FreqKDError, RuntimeError):
    """Training finished and its outputs were kept, but uploading them to the Hub failed."""


#: exit codes of the ``hf-freqkd`` command (documented in README and checked by the bad-input catalogue)
EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1
EXIT_HUB_UPLOAD_FAILED = 3
EXIT_INTERRUPTED = 130
