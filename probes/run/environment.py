"""The one description of the machine and versions the numbers depend on."""
from __future__ import annotations

import hashlib
import os
import platform
import sys
from importlib import metadata
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch

from audit.probes.run.processes import is_user_file

#: The environment variables that set how many threads the math libraries use.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def cpu_name() -> str:
    """The processor's model name (Linux reads /proc/cpuinfo), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The CPU features whose presence changes which kernels the math libraries pick.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
             "asimd", "sve")


def cpu_flags() -> str:
    """The :data:`CPU_FLAGS` this processor has (Linux reads /proc/cpuinfo; else empty)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(f for f in CPU_FLAGS if f in have)
    except OSError:
        pass
    return ""


def gpu_driver() -> Optional[str]:
    """The NVIDIA kernel driver's version (Linux), else None."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as fh:
            words = fh.readline().split()
    except OSError:
        return None
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


def describe(device: Union[str, torch.device]) -> dict[str, Any]:
    """Python, platform, CPU, thread counts, torch/NumPy/torchvision/scipy, CUDA and cuDNN
    versions, the device (and the GPU's name on CUDA)."""
    device = torch.device(device)
    env = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),  # reading it fixes nothing
        "torch": torch.__version__, "numpy": np.__version__, "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    for package in ("torchvision", "scipy"):
        try:  # the version without paying for the import
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if device.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
        env["driver"] = gpu_driver()
    return env


def thread_variables() -> dict[str, Any]:
    """Each of :data:`THREAD_VARIABLES` as this process sees it (None when unset)."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def _source_files(models: Iterable[torch.nn.Module]) -> set[Any]:
    """The user's source files this process has loaded, and those defining the models'
    modules (the built-in example's included; torch's own left out)."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and is_user_file(path):
            files.add(os.path.abspath(path))
    for model in models:
        for name in {type(m).__module__ for m in model.modules()}:
            path = getattr(sys.modules.get(name), "__file__", None)
            if not name.startswith("torch") and isinstance(path, str) and path.endswith(".py"):
                files.add(os.path.abspath(path))
    return files


def code_fingerprint(models: Iterable[torch.nn.Module] = ()) -> Optional[str]:
    """A fingerprint of the code being trained: the contents (not the paths) of the user's
    source files loaded when training starts, of the files defining the models' modules and of
    the cells (or files) a target shipped by value came from.
    The same code, wherever it lies, gives the same fingerprint; None when no file is known."""
    from audit.probes.run.target import SHIPPED_CODE

    digests = {hashlib.blake2b(text.encode(), digest_size=16).hexdigest() for text in SHIPPED_CODE}
    for path in _source_files(models):
        try:
            with open(path, "rb") as fh:
                digests.add(hashlib.blake2b(fh.read(), digest_size=16).hexdigest())
        except OSError:
            continue
    if not digests:
        return None
    return hashlib.blake2b("\n".join(sorted(digests)).encode(), digest_size=8).hexdigest()


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)
