"""The one description of the machine and versions the numbers depend on."""
from __future__ import annotations

import platform
from importlib import metadata

import numpy as np
import torch


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


def describe(device) -> dict:
    """Python, platform, CPU, thread count, torch/NumPy/torchvision/scipy, CUDA and cuDNN
    versions, the device (and the GPU's name on CUDA)."""
    device = torch.device(device)
    env = {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu": cpu_name(), "threads": torch.get_num_threads(),
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
    return env
