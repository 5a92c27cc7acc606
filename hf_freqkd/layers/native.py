"""The fused CPU kernel of FAM-KD's local self-attention (``local_attention.c``), built at first use.

The C file needs no Python or torch headers, so building it takes well under a second with the
machine's C compiler (``$CC``, else ``cc`` or ``gcc``); the library is cached under
``$HF_FREQKD_CACHE`` (default ``~/.cache/hf_freqkd``) by the hash of the source and of the compiler
target (:func:`compiler_target`: built with ``-march=native``, a library is only good for CPUs of the
instruction sets it was built for, and a home folder may be shared by cluster nodes of several kinds),
and loaded with ctypes.
Without a compiler, or with ``HF_FREQKD_NATIVE=0``, :func:`local_attention_kernel` returns None
and :class:`~hf_freqkd.layers.frequency_attention.LocalSelfAttention` keeps its torch path, which
computes the same function (the tests compare the three paths: reference, torch, native).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("local_attention.c")
#: ``HF_FREQKD_NATIVE=0`` turns the fused kernel off (the torch path runs instead).
DISABLE_VARIABLE = "HF_FREQKD_NATIVE"
#: Part of the cached library's name with the source's hash: change it when the build steps change.
BUILD_RECIPE = "O3 fast-math march=native, linked without crtfastmath"


def cache_folder() -> Path:
    return Path(os.environ.get("HF_FREQKD_CACHE", Path.home() / ".cache" / "hf_freqkd")) / "native"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@lru_cache(maxsize=None)
def compiler_target() -> str:
    """What ``-march=native`` compiles for on this machine, as text: part of the cached library's name.

    The compiler's version, and its own answer (gcc's ``-march=native -Q --help=target``: the
    ``-march`` / ``-mtune`` it picks and the instruction sets it enables); for a compiler without that
    answer (clang), the CPU's model name and flags from /proc/cpuinfo. Asked once per process.
    """
    compiler = _compiler()
    parts = [platform.machine()]
    if compiler is not None:
        parts.append(_run_quietly([compiler, "--version"]).split("\n", 1)[0])
        answer = _run_quietly([compiler, "-march=native", "-Q", "--help=target"])
        chosen = [
            " ".join(line.split())
            for line in answer.splitlines()
            if line.strip().startswith(("-march=", "-mtune=")) or line.rstrip().endswith("[enabled]")
        ]
        if chosen:
            return "\n".join(parts + chosen)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "\n".join(parts + [platform.processor()])
    first_processor = cpuinfo.split("\n\n", 1)[0]
    return "\n".join(parts + [line for line in first_processor.splitlines() if line.startswith(("model name", "flags", "Features", "CPU part"))])


def _run_quietly(command: list[str]) -> str:
    """The command's output, or "" when it fails."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def library_path() -> Path:
    """Where the library of this source, build recipe and compiler target is cached."""
    digest = hashlib.sha256(SOURCE.read_bytes() + BUILD_RECIPE.encode() + compiler_target().encode()).hexdigest()[:16]
    return cache_folder() / f"local_attention-{digest}.so"


def _build(source: Path, target: Path) -> None:
    """Compile ``source`` into ``target`` atomically: concurrent processes (one per GPU or CPU rank)
    each build into their own temporary file and rename it, so none loads a half-written library."""
    compiler = _compiler()
    if compiler is None:
        raise OSError("no C compiler found ($CC, cc or gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built, objects = Path(scratch) / target.name, Path(scratch) / "local_attention.o"
        # -ffast-math lets gcc call glibc's vectorised expf; -march=native vectorises for this CPU
        # (retried without it for compilers that do not know the flag). Compiling and linking are two
        # steps on purpose: linking a shared library with -ffast-math adds crtfastmath.o, which turns
        # on flush-to-zero for the whole process when the library loads, changing every other
        # computation's subnormals.
        compile_base = [compiler, "-O3", "-ffast-math", "-fPIC", "-c", str(source), "-o", str(objects)]
        for flags in (["-march=native"], []):
            result = subprocess.run(compile_base[:1] + flags + compile_base[1:], capture_output=True, text=True)
            if result.returncode == 0:
                break
        if result.returncode == 0:
            result = subprocess.run([compiler, "-shared", "-pthread", str(objects), "-o", str(built), "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"{compiler} failed on {source}: {result.stderr.strip()[:2000]}")
        os.replace(built, target)


@lru_cache(maxsize=None)
def _load() -> ctypes.CDLL | None:
    target = library_path()
    try:
        if not target.exists():
            _build(SOURCE, target)
        library = ctypes.CDLL(str(target))
    except OSError as error:
        logger.warning("FAM-KD's fused local-attention kernel is unavailable (%s); using the torch path", error)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_long
    library.hf_freqkd_local_attention_forward.argtypes = [pointer] * 4 + [size] * 6
    library.hf_freqkd_local_attention_forward.restype = ctypes.c_int
    library.hf_freqkd_local_attention_backward.argtypes = [pointer] * 7 + [size] * 6
    library.hf_freqkd_local_attention_backward.restype = ctypes.c_int
    return library


def local_attention_kernel(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The loaded library when every tensor is a float32 CPU tensor and the kernel is available, else None."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":  # read on every call: benchmarks time both paths in one process
        return None
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return None
    return _load()


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("FAM-KD's local-attention kernel could not allocate its scratch rows (a few KB per thread)")


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    assert tensor.is_contiguous()
    return ctypes.c_void_p(tensor.data_ptr())


def forward(library: ctypes.CDLL, query: torch.Tensor, keys_values: torch.Tensor, relative: torch.Tensor, size: int) -> torch.Tensor:
    """``out`` of the window attention; shapes as in ``local_attention.c``."""
    query, keys_values, relative = query.contiguous(), keys_values.contiguous(), relative.contiguous()
    batch, channels, height, width = query.shape
    out = torch.empty_like(query)
    _check(library.hf_freqkd_local_attention_forward(
        _pointer(query), _pointer(keys_values), _pointer(relative), _pointer(out),
        batch, channels, height, width, size, torch.get_num_threads(),
    ))
    return out


def backward(
    library: ctypes.CDLL, query: torch.Tensor, keys_values: torch.Tensor, relative: torch.Tensor,
    grad_out: torch.Tensor, size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_query, grad_keys_values, grad_relative)``, the last ``(C, size * size)``; the output is
    recomputed inside, so the forward's ``out`` need not be kept."""
    query, keys_values, relative = query.contiguous(), keys_values.contiguous(), relative.contiguous()
    grad_out = grad_out.contiguous()
    batch, channels, height, width = query.shape
    grad_query = torch.empty_like(query)
    grad_keys_values = torch.zeros_like(keys_values)
    grad_relative = query.new_zeros(batch, channels, size * size)
    _check(library.hf_freqkd_local_attention_backward(
        _pointer(query), _pointer(keys_values), _pointer(relative), _pointer(grad_out), _pointer(grad_query), _pointer(grad_keys_values), _pointer(grad_relative),
        batch, channels, height, width, size, torch.get_num_threads(),
    ))
    return grad_query, grad_keys_values, grad_relative.sum(0)
