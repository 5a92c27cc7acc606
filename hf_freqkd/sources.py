"""Local path or Hugging Face Hub id? Decided early, cheaply and before any download.

A dataset, a teacher and a student are each named by one string. Handed to the Hub, a mistyped local
path costs ~25 s of retries and ends in a message about the Hub, so the name is told apart first:

* a string naming something on disk is a local path;
* a string that *looks* like a path (starts with ``.``, ``/`` or ``~``, holds the platform's
  separator when that is not ``/``, holds more than one ``/``, ends in a data or weights file
  suffix such as ``.parquet``, or starts with a folder that exists here, as ``data/`` in
  ``data/my_images``) but names nothing is a missing path: :func:`missing_path_error` says so, with
  "did you mean" for near names;
* a string that passes huggingface_hub's repo-id validation is a Hub id. Before the library
  downloads it, :func:`hub_unreachable_message` says in one line when there is no network,
  instead of the library's ~25 s of retries; :func:`hub_offline_message` is the line for a Hub id
  that is not cached while ``HF_HUB_OFFLINE=1`` is set;
* anything else is neither, and is reported as a missing path.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from .errors import MissingPathError

#: suffixes of files users name as data or weights: such a string is a file path, never a repo id
FILE_SUFFIXES = frozenset(
    {
        ".parquet", ".arrow", ".csv", ".json", ".jsonl", ".txt", ".zip", ".tar", ".gz", ".tgz",
        ".png", ".jpg", ".jpeg", ".bmp", ".webp", ".npy", ".npz",
        ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".yaml", ".yml",
    }
)
#: seconds to wait for the Hub to answer the one reachability request
HUB_PROBE_TIMEOUT = 3.0


def local_path(name: str) -> Path:
    """``name`` as a filesystem path (``~`` expanded)."""
    return Path(name).expanduser()


def looks_like_path(name: str) -> bool:
    """True when ``name`` can only be meant as a local path, whether or not it exists."""
    if local_path(name).exists() or name.startswith((".", "/", "~")):
        return True
    if os.sep != "/" and os.sep in name or os.altsep and os.altsep != "/" and os.altsep in name:
        return True
    if name.count("/") > 1 or Path(name).suffix.lower() in FILE_SUFFIXES:
        return True
    # ``data/my_images`` next to a ``data/`` folder is that folder's child, not the Hub repo data/my_images.
    first, _, rest = name.partition("/")
    return bool(rest) and Path(first).is_dir()


def is_hub_repo_id(name: str) -> bool:
    """Valid ``NAME`` or ``ORG/NAME`` syntax by huggingface_hub's own rules (not whether the repo exists)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or name.startswith("/") or name.endswith("/"):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def missing_path_error(what: str, name: str, expected: str, known_names: Sequence[str] = ()) -> MissingPathError:
    """The error for a local path that does not exist: where it was looked for and the nearest names.

    ``known_names`` are names that are not files but are accepted as ``name`` (the generated data
    sets, say): a near one is suggested too.
    """
    path = local_path(name)
    suggestions = []
    if "/" not in name and os.sep not in name:
        suggestions += difflib.get_close_matches(name, known_names, n=3, cutoff=0.6)
    # The deepest folder that exists, and the first part of the path missing from it.
    parent, missing_parts = path.parent, [path.name]
    while not parent.is_dir() and parent != parent.parent:
        parent, missing_parts = parent.parent, [parent.name, *missing_parts]
    if parent.is_dir():
        siblings = sorted(entry.name for entry in parent.iterdir())
        for near in difflib.get_close_matches(missing_parts[0], siblings, n=3, cutoff=0.6):
            corrected = parent / near / Path(*missing_parts[1:]) if len(missing_parts) > 1 else parent / near
            suggestion = corrected if corrected.exists() else parent / near
            suggestions.append(_as_given(suggestion, name))
        folder = "the current folder" if str(parent) == "." else f"'{_as_given(parent, name)}'"
        where = f" (no '{missing_parts[0]}' in {folder}{_cwd_note(name)})"
    else:
        where = ""
    hint = f". Did you mean {' or '.join(repr(s) for s in dict.fromkeys(suggestions))}?" if suggestions else ""
    return MissingPathError(f"{what} '{name}' does not exist{where}: expected {expected}{hint}")


def _as_given(path: Path, name: str) -> str:
    """``path`` written the way the user wrote ``name``: relative stays relative, ``~`` stays ``~``."""
    home = Path.home()
    if name.startswith("~") and path.is_relative_to(home):
        return str(Path("~") / path.relative_to(home))
    if name.startswith("./") and not path.is_absolute():
        return "./" + str(path)
    return str(path)


def _cwd_note(name: str) -> str:
    return "" if os.path.isabs(os.path.expanduser(name)) else f", relative to {os.getcwd()}"


@functools.lru_cache(maxsize=4)
def _probe_hub(endpoint: str) -> str | None:
    from huggingface_hub.utils import get_session

    try:
        # Any HTTP answer, even an error status, means the Hub is there; only the transport can fail here.
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - httpx's transport errors (DNS, refused, timeout, proxy)
        return " ".join(str(error).split()) or type(error).__name__
    return None


def hub_unreachable_message(what: str, repo_id: str, instead: str) -> str | None:
    """One line saying the Hub cannot be reached for ``repo_id``, or None when it answers (or is switched off).

    One short request (once per process) replaces the library's ~25 s of retries when there is no
    network. With ``HF_HUB_OFFLINE=1`` nothing is sent: the library serves cached copies itself, and
    :func:`hub_offline_message` is the line to show when it has none.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return None
    reason = _probe_hub(constants.ENDPOINT)
    if reason is None:
        return None
    return (
        f"{_not_local(what, repo_id)} and the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached ({reason}): "
        f"{instead}; to use a copy already in the Hugging Face cache, set HF_HUB_OFFLINE=1"
    )


def hub_offline_message(what: str, repo_id: str, instead: str) -> str:
    """The line for a Hub id that is not in the cache while ``HF_HUB_OFFLINE=1`` is set."""
    return (
        f"{_not_local(what, repo_id)} and, as a Hub id, it is not in the Hugging Face cache while HF_HUB_OFFLINE=1 "
        f"keeps the Hub switched off: {instead}, or unset HF_HUB_OFFLINE to download it"
    )


def is_hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _not_local(what: str, name: str) -> str:
    return f"{what} '{name}' is not a local path (nothing of that name in {os.getcwd()})"
