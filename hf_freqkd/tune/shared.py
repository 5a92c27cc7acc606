"""What every trial of a search shares and one process builds: the teacher cache, FreeKD's prompts.

Several workers (``--workers N``, or the same command on several machines over one shared folder)
may reach a missing piece at the same moment; :func:`built_once` lets the first build it under an
exclusive file lock while the others wait, then find it built.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_file: Path):
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built_once(target: Path, build: Callable[[], None]) -> float | None:
    """Run ``build`` (which must create ``target``) unless ``target`` exists, one process at a time.

    Returns the seconds the build took here, or None when ``target`` was there already."""
    target = Path(target)
    if target.exists():
        return None
    with exclusive(target.parent / f".{target.name}.lock"):
        if target.exists():  # built by another worker while this one waited
            return None
        start = time.perf_counter()
        build()
        return time.perf_counter() - start


def process_is_alive(pid: int) -> bool:
    """True if a process with id ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
