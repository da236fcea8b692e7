"""``audit init -- python train.py``: the init audit on an unmodified training script.

Each scheme is one fresh run of the script (:mod:`audit.probes.child.init_scheme`): ``default``
measures the script's own init, whatever it did before training; every other scheme
re-initializes the parameters the script's optimizer holds right before the first training
forward. The runs' statistics are diagnosed and ranked exactly as in target mode.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shlex
import tempfile
import threading
import time
from typing import Any, Callable, Optional

from audit.probes.run import program as script_runner
from audit.probes.errors import UsageError
from audit.probes.init.thresholds import resolve_thresholds
from audit.probes.progress import Progress, Reporter
from audit.probes.init.scheme_names import validate_schemes
from audit.probes.results import BUILTIN_SCHEMES, InitResult, LayerStats, SchemeResult
from audit.probes.results.records import Status
from audit.probes.run import executors
from audit.probes.run.executors import Executor, Job
from audit.probes.run.processes import child_argv
from audit.probes.run.spec import SchemeRunSpec, write_spec


@dataclasses.dataclass
class ScriptInitOptions:
    """What one ``audit init -- python ...`` runs."""

    script: list[str]
    schemes: Optional[list[str]] = None
    steps: int = 5
    seed: int = 0
    device: str = "auto"
    thresholds: Optional[dict[str, Any]] = None
    cwd: Optional[str] = None
    executor: str = "local"  # where the scheme runs execute: local or ray
    ray_address: Optional[str] = None


def _layer(data: dict[str, Any]) -> LayerStats:
    names = {f.name for f in dataclasses.fields(LayerStats)}
    return LayerStats(**{k: v for k, v in data.items() if k in names})


def _run_scheme(opts: ScriptInitOptions, scheme: str, folder: str, margin: float,
                executor: Executor, init_seed: int = 0) -> dict[str, Any]:
    """One fresh run of the script under ``scheme`` (on init seed ``init_seed``); its
    measurements."""
    spec_path = os.path.join(folder, f"{scheme.replace(':', '_')}.{init_seed}.json")
    result_path = spec_path + ".result"
    log_path = spec_path + ".log"
    device = "cpu" if opts.device == "cpu" else "auto"
    write_spec(SchemeRunSpec(scheme=scheme, steps=opts.steps, result=result_path, device=device,
                             saturation_margin=margin, init_seed=init_seed, seed=opts.seed),
               spec_path)
    program = script_runner.parse(opts.script)
    argv = child_argv("audit.probes.child.init_scheme", spec_path, "--", *program.argv(),
                      options=tuple(program.options))
    done = executor.run(Job(argv, dict(os.environ), log_path, folder, [spec_path], cwd=opts.cwd))
    if not os.path.isfile(result_path):
        tail = []
        if os.path.isfile(log_path):
            with open(log_path, "rb") as fh:
                tail = fh.read()[-600:].decode("utf-8", "replace").strip().splitlines()
        error = (f"the run {done.lost}" if done.lost else f"the run exited with status "
                 f"{done.exit_code}: {tail[-1] if tail else 'no output'}")
        return {"scheme": scheme, "layers": [], "loss": [], "status": Status.CRASHED,
                "error": error}
    with open(result_path, encoding="utf-8") as fh:
        return json.load(fh)


def _warm_diagnosis() -> None:
    """Import the diagnosis (scipy: about a second) in a background thread while the first
    scheme's run goes on, instead of before it or after it."""
    def load() -> None:
        try:
            importlib.import_module("audit.probes.init.diagnose")
        except Exception:  # the diagnosis's own import, later, will say what is wrong
            pass

    threading.Thread(target=load, name="audit-warm-diagnosis", daemon=True).start()


def _scheme_result(data: dict[str, Any], limits: dict[str, Any], seconds: float) -> SchemeResult:
    from audit.probes.init.diagnose import depth_trends, diagnose, scheme_score

    result = SchemeResult(name=data["scheme"], verdict="unhealthy")
    result.layers = [_layer(x) for x in data.get("layers", [])]
    result.loss = [x for x in data.get("loss", []) if x is not None]
    result.error = data.get("error")
    if data.get("status") in ("no_step", "started") and result.error is None:
        result.error = "the script made no optimizer step"
    result.findings = diagnose(result.layers, result.loss, limits, error=result.error)
    result.verdict = "healthy" if not result.findings and result.error is None else "unhealthy"
    result.score = scheme_score(result)
    result.depth_trend = depth_trends(result.layers, limits)
    result.seconds = seconds
    return result


def _seed_runs(opts: ScriptInitOptions, folder: str, limits: dict[str, Any], executor: Executor,
               progress: Reporter) -> Callable[[str, int], list[float]]:
    """Runs of the script on more init seeds (:func:`probes.init.ranking.settle`): their
    loss curves (empty where the run made no step)."""
    def run(name: str, init_seed: int) -> list[float]:
        if progress is not None:
            progress(Progress(f"init seed {init_seed + 1}: {name}"))
        data = _run_scheme(opts, name, folder, limits["saturation_margin"], executor, init_seed)
        return [x for x in data.get("loss", []) if x is not None]
    return run


def _own_failure(data: dict[str, Any]) -> Optional[str]:
    """One line when the script's own run shows it cannot be audited (no step at all)."""
    if data.get("status") == Status.OK:
        return None
    return data.get("error") or ("the script ended without an optimizer step: the audit "
                                 "measures the model a torch.optim optimizer trains; does the "
                                 "script train, with these arguments?")


def _fix_code(code: str, best: Optional[str], runs: list[Any]) -> str:
    """The scheme's code, placed in the script (the model's own init needs no placing)."""
    where = next((r.get("optimizer_where") for r in runs if r.get("optimizer_where")), None)
    model = next((r.get("model") for r in runs if r.get("model")), "the model")
    if not code or not where or best == "default":
        return code
    return (f"# In the script: after {model} is built and before the optimizer is made "
            f"({where}), with `model` the {model}:\n{code}")


def _noise_note(runs: list[Any]) -> str:
    prints = {r.get("init_fingerprint") for r in runs if r.get("init_fingerprint")}
    if len(prints) <= 1:
        return ""
    return (" Note: the script's runs start from different parameters (it is not seeded the "
            "same way each run), so the scheme comparison carries seed noise; run `audit "
            "determinism -- python ...` to find why.")


def run_init_script(opts: ScriptInitOptions,
                    progress: Reporter = None) -> InitResult:
    """Every scheme as one run of the script; the diagnosed, ranked :class:`InitResult`."""
    started = time.perf_counter()
    names = validate_schemes(opts.schemes or list(BUILTIN_SCHEMES))
    names = ["default"] + [n for n in names if n != "default"]
    limits = resolve_thresholds(opts.thresholds)
    _warm_diagnosis()
    runs, results = [], []
    executor = executors.make(opts.executor, opts.ray_address, opts.cwd, device=opts.device)
    with tempfile.TemporaryDirectory(prefix="audit-init-script-") as folder:
        try:
            for i, name in enumerate(names):
                if progress is not None:
                    progress(Progress(f"scheme {i + 1} of {len(names)}: {name}"))
                t0 = time.perf_counter()
                runs.append(_run_scheme(opts, name, folder, limits["saturation_margin"], executor))
                if i == 0 and _own_failure(runs[0]):
                    raise UsageError(_own_failure(runs[0]))
                results.append(_scheme_result(runs[-1], limits, time.perf_counter() - t0))
            from audit.probes.init.ranking import recommend, settle

            settle(results, _seed_runs(opts, folder, limits, executor, progress), limits)
        finally:
            executor.close()
    choice = recommend(results, limits)
    best, reason = choice.scheme, choice.reason
    code = next((r.get("code", "") for r in runs if r["scheme"] == best), "") if best else ""
    own = results[0]
    return InitResult(
        verdict=own.verdict, recommended=best, schemes=results, mode="script",
        target=shlex.join(opts.script), steps=opts.steps, seed=opts.seed,
        device=runs[0].get("device", opts.device), environment=runs[0].get("environment", {}),
        thresholds=limits, recommendation_code=_fix_code(code, best, runs),
        recommendation_reason=reason + _noise_note(runs), recommendation=choice,
        error=f"the script's own init failed to train: {own.error}" if own.error else None,
        seconds=time.perf_counter() - started)
