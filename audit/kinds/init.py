"""The init audit as a kind: settings, flags, ``[tool.audit.init]``, the run, the checks
(default init healthy, one per finding kind, recommended scheme healthy), the baseline
snapshot and regressions, and the reporters."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from audit import config
from audit.kinds import snapshot_shape as shape
from audit.probes.progress import Progress, Reporter
from audit.kinds.base import (AuditKind, Regression, Settings, failing_names, plural, positive_arg,
                              rounded)
from audit.probes.errors import TargetError, UsageError
from audit.probes.init.scheme_names import scheme_problem
from audit.probes.init.thresholds import DEFAULT_THRESHOLDS
from audit.probes.results import Check, InitResult
from audit.reports import html, terminal
from audit.reports.common import finding_advice, finding_numbers, finding_title, init_headline


if TYPE_CHECKING:  # torch: imported when an audit runs
    from audit.probes.run.training import TrainingSetup

#: Baseline tolerances, per layer metric.
TOLERANCES = {
    "grad_norm": 1.0,  # decades a layer's gradient norm may move further from the median's
    "act_std": 0.5,  # decades a layer's activation std may move further from 1
    "dead_fraction": 0.1,  # absolute increase of a layer's share of dead ReLU units
    "saturated_fraction": 0.1,  # absolute increase of its share of saturated units
}
FINDING_CHECKS = (
    ("vanishing_gradients", "no vanishing gradients"),
    ("exploding_gradients", "no exploding gradients"),
    ("vanishing_activations", "no vanishing activations"),
    ("exploding_activations", "no exploding activations"),
    ("dead_units", "no dead units"),
    ("saturation", "no saturated units"),
    ("nonfinite", "no non-finite values"),
)
SCHEMES_EXPECTED = ("an array of scheme names or a comma-separated string of them "
                    "(default, kaiming_normal, kaiming_uniform, xavier_normal, xavier_uniform, "
                    "orthogonal, lsuv, normal:STD)")


@dataclass
class InitSettings(Settings):
    steps: int = 5
    schemes: Optional[list[str]] = None  # None: every built-in scheme
    thresholds: Optional[dict[str, Any]] = None  # overrides of probes/init/thresholds.py's DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        if isinstance(self.schemes, str):
            self.schemes = comma_list(self.schemes)
        self.thresholds = dict(self.thresholds or {})


def comma_list(text: str) -> list[Any]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (the one comma-list parser of flags and config)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_arg, default=None,
                   help="optimizer steps per scheme (default 5)")
    p.add_argument("--schemes", type=comma_list, default=None,
                   help="comma-separated: default,kaiming_normal,kaiming_uniform,xavier_normal,"
                        "xavier_uniform,orthogonal,lsuv,normal:STD (default: all but normal)")


def _check_schemes(chk: config.Checker, value: Any) -> list[str]:
    names = config.string_list(value)
    if not names:
        chk.fail("tool.audit.init", "schemes", SCHEMES_EXPECTED, value)
    for scheme in names:
        problem = scheme_problem(scheme)
        if problem:
            chk.fail("tool.audit.init", "schemes", SCHEMES_EXPECTED + f"; {scheme!r}: {problem}", value)
    return list(dict.fromkeys(names))


def _check_thresholds(chk: config.Checker, value: Any) -> dict[str, Any]:
    table = "tool.audit.init.thresholds"
    if not isinstance(value, dict):
        chk.fail("tool.audit.init", "thresholds", "a table of diagnosis thresholds", value)
    for key, limit in value.items():
        if key not in DEFAULT_THRESHOLDS:
            chk.unknown(table, key, DEFAULT_THRESHOLDS)
        if not config.is_number(limit) or limit < 0:
            chk.fail(table, key, "a non-negative number", limit)
    return dict(value)


def check_table(chk: config.Checker, table: dict[str, Any]) -> dict[str, Any]:
    special = {"schemes": _check_schemes, "thresholds": _check_thresholds,
               "tolerances": lambda c, v: config.check_tolerances(c, "init", v, TOLERANCES)}
    return config.check_table(chk, "init", table, {"steps": config.positive_int()}, special)


def run_script(s: InitSettings, progress: Reporter = None) -> InitResult:
    """Script mode: each scheme is one fresh run of the script."""
    from audit.probes.init.script import ScriptInitOptions, run_init_script

    assert s.script is not None  # script mode
    opts = ScriptInitOptions(script=s.script, schemes=s.schemes, steps=s.steps, seed=s.seed,
                             device=s.device, thresholds=s.thresholds or None, cwd=s.cwd,
                             executor=s.executor, ray_address=s.ray_address)
    try:
        return run_init_script(opts, progress)
    except (UsageError, ValueError) as exc:  # the engine's lines name no command
        raise UsageError(f"audit init: {exc}") from None


def _setup(s: InitSettings, name: str) -> TrainingSetup:
    """The target as a TrainingSetup, built in this process."""
    from audit.probes.run.target import call_target, load_target, normalize

    options: dict[str, Any] = dict(
input_shape=tuple(s.input_shape) if s.input_shape else None,
                   num_classes=s.num_classes, seed=s.seed, batches=max(s.steps, 1))
    if s.target is None or isinstance(s.target, str):
        return load_target(s.target, **options)
    if callable(s.target) and not hasattr(s.target, "parameters"):
        return normalize(call_target(s.target, name), name, **options)
    return normalize(s.target, name, **options)


def run(s: InitSettings, progress: Reporter = None) -> InitResult:
    """Build the target in this process and run every scheme on it, under a watchdog that
    each step kicks. ``s.target`` may also be an ``nn.Module`` or a callable (the Python API
    and the pytest fixture)."""
    if s.script:
        return run_script(s, progress)
    # A target's schemes train here, in no fresh run: the executor has nothing to move.
    from audit.probes.init.engine import run_init
    from audit.probes.run.processes import Stalled, Watchdog
    from audit.probes.run.seeding import seed_all
    from audit.probes.run.environment import resolve_device

    try:
        device = resolve_device(s.device)
    except RuntimeError as exc:
        raise UsageError(f"audit init: {exc}") from None
    seed_all(s.seed)
    name = s.target_label if s.target is None or isinstance(s.target, str) else (
        getattr(s.target, "__qualname__", None) or f"{type(s.target).__name__} object")
    try:
        with Watchdog(s.timeout, "loading the target") as dog:
            setup = _setup(s, name)

            def report(event: Progress) -> None:
                dog.kick(f"{event.phase}, in step {event.done}")
                if progress is not None:
                    progress(event)

            return run_init(setup, schemes=s.schemes, steps=s.steps, seed=s.seed,
                            device=str(device), thresholds=s.thresholds or None,
                            progress=report, target=name)
    except Stalled as exc:
        raise UsageError(f"audit init: timed out: {exc}; raise --timeout if a step can take "
                         "longer") from None
    except (TargetError, ValueError) as exc:
        raise UsageError(f"audit init: {exc}") from None


# --------------------------------------------------------------------------- checks


def _better(result: InitResult) -> bool:
    """A scheme other than the model's own is recommended, with code to apply it."""
    return bool(result.recommendation_code and result.recommended
                and result.recommended != "default")


def _default_check(result: InitResult, findings: list[Any]) -> Check:
    default = result.scheme("default")
    _, headline = init_headline(result)
    if result.passed:
        return Check("init", "default init healthy", True, headline)
    parts = [headline]
    if result.error:
        parts.append(result.error)
    elif default is not None and default.error:
        parts.append(f"the model's own init failed to train: {default.error}")
    if findings:
        kinds = sorted({finding_title(f.kind).lower() for f in findings})
        parts.append(f"{plural(len(findings), 'finding')}: {', '.join(kinds)}")
    if result.recommended and result.recommended != "default":
        parts.append(f"recommended instead: {result.recommended}")
    fix = result.recommendation_code if _better(result) else "\n".join(dict.fromkeys(
        f"# {finding_advice(f.kind)}" for f in findings if finding_advice(f.kind)))
    return Check("init", "default init healthy", False, "; ".join(parts), fix)


def _finding_check(result: InitResult, kind: str, name: str, findings: list[Any]) -> Check:
    found = [f for f in findings if f.kind == kind]
    if not found:
        return Check("init", name, True, f"no {finding_title(kind).lower()} with the model's own init")
    layers = [(f.layer or "the model") + finding_numbers(f)
              + (f": {f.message.strip().rstrip('.')}" if f.message else "") for f in found]
    message = (f"{finding_title(kind)} with the model's own init at "
               + "; ".join(layers) + ". What to do: " + finding_advice(kind))
    fix = f"# Use {result.recommended}:\n{result.recommendation_code}" if _better(result) else ""
    return Check("init", name, False, message, fix.strip())


def _recommended_check(result: InitResult) -> Check:
    best = result.scheme(result.recommended) if result.recommended else None
    if best is None:
        return Check("init", "recommended scheme healthy", False,
                     result.recommendation_reason or "no scheme could be recommended: "
                     "every scheme failed")
    ok = best.verdict == "healthy" and best.error is None
    detail = "healthy" if ok else (
        f"unhealthy ({plural(len(best.findings), 'finding')}"
        + (f"; {best.error}" if best.error else "") + ")")
    message = f"the recommended scheme {best.name} is {detail}"
    if result.recommendation_reason:
        message += f". {result.recommendation_reason}"
    return Check("init", "recommended scheme healthy", ok, message,
                 "" if ok else "none of the schemes tried is healthy: look at the findings of "
                 "each in the report (normalization layers, residual connections, the "
                 "nonlinearity, the learning rate)")


def checks(result: InitResult) -> list[Check]:
    """The init audit as checks: default init healthy, one per finding kind of the default
    scheme (with the layers and what to do), recommended scheme healthy."""
    default = result.scheme("default")
    findings = list(default.findings) if default is not None else []
    return ([_default_check(result, findings)]
            + [_finding_check(result, kind, name, findings) for kind, name in FINDING_CHECKS]
            + [_recommended_check(result)])


# --------------------------------------------------------------------------- baseline


def snapshot(result: InitResult) -> dict[str, Any]:
    """What a baseline keeps of a result (plain, JSON-able, numbers to 4 significant digits)."""
    default = result.scheme("default")
    best = result.scheme(result.recommended) if result.recommended else None
    layers = {}
    for layer in (default.layers if default is not None else []):
        layers[layer.name] = {
            "grad_norm": rounded(layer.grad_norm), "act_std": rounded(layer.act_std),
            "dead_fraction": rounded(layer.dead_fraction),
            "saturated_fraction": rounded(layer.saturated_fraction),
            "nonfinite": bool(layer.nonfinite)}
    return {
        "settings": {"steps": result.steps, "seed": result.seed, "device": result.device,
                     "target": result.target, "schemes": [s.name for s in result.schemes]},
        "verdict": result.verdict,
        "error": result.error,
        "recommended": result.recommended,
        "recommended_healthy": bool(best is not None and best.verdict == "healthy" and best.error is None),
        "findings": sorted(({"kind": f.kind, "layer": f.layer} for f in
                            (default.findings if default is not None else [])),
                           key=lambda f: (f["kind"], f["layer"] or "")),
        "layers": layers,
        "failing_checks": failing_names(checks(result)),
    }




#: The median layer's gradient norm in the baseline and now (None: no layer had one).
Medians = tuple[Optional[float], Optional[float]]


def _decades_from(value: Optional[float], ref: Optional[float]) -> Optional[float]:
    if value is None or ref is None or value <= 0 or ref <= 0:
        return None
    return abs(math.log10(value / ref))


def _median(values: list[Any]) -> Optional[float]:
    values = sorted(v for v in values if v is not None and v > 0)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else math.sqrt(values[mid - 1] * values[mid])


def _gradient_regression(name: str, old: dict[str, Any], cur: dict[str, Any], medians: Medians,
                         tol: Optional[float]) -> list[str]:
    if tol is None or not old.get("grad_norm") or old["grad_norm"] <= 0:
        return []
    g = cur.get("grad_norm")
    if g is None or g <= 0:
        return [f"{name}: the gradient vanished (norm {g if g is not None else 'missing'}, "
                f"{old['grad_norm']:.3g} in the baseline)"]
    was, now_dev = _decades_from(old["grad_norm"], medians[0]), _decades_from(g, medians[1])
    if was is not None and now_dev is not None and now_dev - was > tol:
        return [f"{name}: gradient norm {g:.3g} is {now_dev:.1f} decades from the median "
                f"layer's, {was:.1f} in the baseline (tolerance {tol:g})"]
    return []


def _layer_regressions(name: str, old: dict[str, Any], cur: dict[str, Any], medians: Medians,
                       tolerances: dict[str, Any]) -> list[str]:
    """What got worse in one layer, as texts."""
    out = _gradient_regression(name, old, cur, medians, tolerances.get("grad_norm"))
    tol = tolerances.get("act_std")
    was, now_dev = _decades_from(old.get("act_std"), 1.0), _decades_from(cur.get("act_std"), 1.0)
    if tol is not None and was is not None and now_dev is not None and now_dev - was > tol:
        out.append(f"{name}: activation std {cur['act_std']:.3g} is {now_dev:.1f} decades "
                   f"from 1, {was:.1f} in the baseline (tolerance {tol:g})")
    for metric, what in (("dead_fraction", "dead units"), ("saturated_fraction", "saturated units")):
        tol, a, b = tolerances.get(metric), cur.get(metric), old.get(metric)
        if tol is not None and a is not None and a - (b or 0.0) > tol:
            out.append(f"{name}: {what} {a:.0%}, {(b or 0.0):.0%} in the baseline "
                       f"(tolerance {tol:g})")
    if cur.get("nonfinite") and not old.get("nonfinite"):
        out.append(f"{name}: non-finite values (finite in the baseline)")
    return out


def regressions(base: dict[str, Any], now: dict[str, Any], tolerances: dict[str, Any]) -> list[Regression]:
    """``(text, where)`` pairs: how ``now`` (a snapshot) is worse than ``base``."""
    out: list[str] = []
    if now.get("error") and not base.get("error"):
        out.append(f"the init audit failed: {now['error']}")
    if base.get("verdict") == "healthy" and now.get("verdict") != "healthy":
        out.append("the model's own init became unhealthy")
    known = {(f["kind"], f["layer"]) for f in base.get("findings") or []}
    out += [f"new finding: {f['kind']} at {f['layer'] or 'the model'}"
            for f in now.get("findings") or [] if (f["kind"], f["layer"]) not in known]
    blayers, nlayers = base.get("layers") or {}, now.get("layers") or {}
    medians = (_median([v.get("grad_norm") for v in blayers.values()]),
               _median([v.get("grad_norm") for v in nlayers.values()]))
    for name, cur in nlayers.items():
        if name in blayers:
            out += _layer_regressions(name, blayers[name], cur, medians, tolerances)
    if base.get("recommended_healthy") and not now.get("recommended_healthy"):
        out.append(f"the recommended scheme ({now.get('recommended') or 'none'}) is no longer healthy")
    return [(text, None) for text in out]


# --------------------------------------------------------------------------- reporters


def verdict_detail(result: InitResult) -> str:
    default = result.scheme("default")
    text = ""
    if default is not None and default.findings:
        kinds = sorted({f.kind for f in default.findings})
        text += f" ({plural(len(default.findings), 'finding')}: {', '.join(kinds)})"
    if result.recommended:
        text += f"; recommended: {result.recommended}"
    return text


def index(result: InitResult) -> tuple[Any, ...]:
    text = (f"Recommended init: {result.recommended}." if result.recommended
            else "No init could be recommended.")
    return text, "recommended", result.recommended or ""


#: What a baseline's init snapshot must hold (checked when the file is read).
SNAPSHOT_RULES = {
    **shape.COMMON,
    "error": (shape.optional(shape.string), "null or a string"),
    "recommended": (shape.optional(shape.string), "null or a scheme name"),
    "recommended_healthy": (shape.boolean, "true or false"),
    "findings": (shape.records({"kind": shape.string, "layer": shape.optional(shape.string)}),
                 "an array of tables with kind and layer"),
    "layers": (shape.tables({"grad_norm": shape.optional(shape.number),
                             "act_std": shape.optional(shape.number),
                             "dead_fraction": shape.optional(shape.number),
                             "saturated_fraction": shape.optional(shape.number),
                             "nonfinite": shape.boolean}),
               "a table of layers, each with numbers (or null) and nonfinite true/false"),
}

KIND = AuditKind(
    name="init", help="per-layer health of the init schemes, and a recommendation",
    settings=InitSettings, add_arguments=add_arguments, check_table=check_table,
    tolerances=TOLERANCES, run=run, checks=checks, snapshot=snapshot, regressions=regressions,
    headline=init_headline, verdict_detail=verdict_detail, summary=terminal.init_summary,
    html=html.init_html, result_type=InitResult, index=index, in_process=True, checked_by_default=True,
    script_mode=True, snapshot_rules=SNAPSHOT_RULES)
