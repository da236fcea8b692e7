"""One audited run: a fresh process that seeds, loads the target and trains under a trace.

Started by :mod:`audit.orchestrate` as ``python -m audit.worker SPEC.json``. It writes its
trace (JSON lines) to the path the spec names and exits with:
0 the steps ran; 3 the target could not be loaded or called (a usage error for the CLI);
4 training raised. Either way the trace's last record says what happened.
"""
from __future__ import annotations

import json
import os
import random
import sys
import traceback

EXIT_OK, EXIT_TARGET, EXIT_CRASH = 0, 3, 4


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA), as the contract says."""
    import numpy as np
    import torch

    from audit.probes import rng_escape

    random.seed(seed)
    np.random.seed(seed)
    rng_escape.seeding_helpers()(seed)  # torch.manual_seed also seeds every CUDA device


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def environment(device) -> dict:
    import platform

    import numpy as np
    import torch

    from audit.probes.determinism import knobs

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "flags": knobs.flags(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:  # the version without paying for the import
        from importlib.metadata import version

        env["torchvision"] = version("torchvision")
    except Exception:
        pass
    return env


def run(spec: dict) -> int:
    from audit.probes.determinism import knobs
    from audit.probes import rng_escape
    from audit.probes.trace import TraceWriter, run_traced

    writer = TraceWriter(spec["trace"])
    lockstep = None
    try:
        rng_escape.install(spec.get("escape_log"), pin=False)
        knobs.observe()
        knobs.apply(spec.get("knobs", []), spec.get("escape_log"))
        if spec.get("jitter"):
            knobs.jitter_workers()
        seed_everything(spec["seed"])
        from audit.probes.target import TargetError, load_target

        try:
            device = resolve_device(spec.get("device", "auto"))
            setup = load_target(spec.get("target"), input_shape=spec.get("input_shape"),
                                num_classes=spec.get("num_classes"), seed=spec["seed"],
                                batches=spec["steps"])
        except (TargetError, RuntimeError) as exc:
            writer.write({"type": "end", "status": "target_error", "message": str(exc)})
            return EXIT_TARGET
        knobs.apply(spec.get("knobs", []), spec.get("escape_log"))  # again: the target may reset flags
        writer.write({"type": "env", "environment": environment(device),
                      "module_sources": knobs.module_sources(setup.model),
                      "synthetic": setup.synthetic, "description": setup.description})
        if spec.get("lockstep"):
            from audit.probes.determinism.lockstep import Lockstep

            lockstep = Lockstep(spec["lockstep"]["folder"], spec["lockstep"]["role"])
        done = run_traced(setup, spec["steps"], device, writer, detail=spec.get("detail", False),
                          lockstep=lockstep)
        writer.write({"type": "end", "status": "ok" if done >= spec["steps"] else "ended_early",
                      "steps": done, "observed": knobs.observed()})
        return EXIT_OK
    except BaseException as exc:  # the user's training raised: keep what was measured
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{rng_escape.short_path(f.filename)}:{f.lineno}" for f in reversed(tb)
                      if "site-packages" not in f.filename and "/probes/" not in f.filename
                      and "/audit/" not in f.filename), None)
        writer.write({"type": "end", "status": "crashed",
                      "message": f"{type(exc).__name__}: {exc}", "where": where,
                      "traceback": traceback.format_exc(limit=20)})
        return EXIT_CRASH
    finally:
        if lockstep is not None:
            lockstep.finish()
        writer.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    if spec.get("cwd_on_path", True) and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    code = run(spec)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
