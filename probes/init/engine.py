"""The init audit: every scheme on the same batches from the same seed, measured and diagnosed.

:func:`run_init` caches the first ``steps`` batches once (on the device) and snapshots the
model's own state once (one CPU copy: the ``default`` scheme). ``default`` runs first, and its
measured step also traces which nonlinearity follows each layer (the gains of the other
schemes). Then, for each scheme: reseed (``random``, NumPy, torch incl. CUDA), restore the
snapshot, apply the scheme in place, reseed again, build a fresh optimizer with the target's
``optimizer`` callable and train ``steps`` optimizer steps in train mode. The first step is
the measured one (:class:`audit.probes.init.flow.FlowProbe` around its forward and backward), so
measuring costs no extra pass. A non-finite loss ends a scheme's steps early. A scheme that
raises is recorded with its error and counts as unhealthy; the others still run. The model
is left in its original state.

Cost, beyond the plain training steps: per scheme a partial state restore, the scheme's
random draws (shared between schemes of one family, see :class:`audit.probes.init.schemes.DrawCache`),
the measured step's statistics (one host sync), and for ``lsuv`` one forward pass.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch

from audit.probes.run.environment import describe as environment
from audit.probes.run.seeding import seed_all
from audit.probes.init.diagnose import depth_trends, diagnose, scheme_score
from audit.probes.init.ranking import recommend, settle
from audit.probes.init.thresholds import resolve_thresholds
from audit.probes.init.flow import FlowProbe, ForwardTrace, modules_with_parameters, trace_forward
from audit.probes.progress import Progress, Reporter, silent
from audit.probes.run.processes import Interrupted
from audit.probes.results import BUILTIN_SCHEMES, InitResult, SchemeResult
from audit.probes.init.scheme_names import validate_schemes
from audit.probes.init.schemes import (DrawCache, apply_scheme, init_seed_value, redraw_own,
                                       restore_state, scheme_code, scheme_owned_keys,
                                       snapshot_state)
from audit.probes.run.training import (TrainingSetup, compute_loss, cycle_batches, make_scheduler,
                                   optimizer_step, step_closure, to_device)

#: Schemes run when none are named: every built-in one. ``normal:STD`` is left out: a fixed
#: std is not a scheme anyone should be steered to without asking for it (``normal:0.01`` in
#: a deep net is the textbook vanishing case, which ``xavier_*`` on ReLU layers already shows);
#: ask for it with ``--schemes default,normal:0.02``.
DEFAULT_SCHEMES = list(BUILTIN_SCHEMES)


def run_init(setup: TrainingSetup, schemes: Optional[list[str]] = None, steps: int = 5,
             seed: int = 0, device: str = "cpu", thresholds: Optional[dict[str, Any]] = None,
             progress: Reporter = None, target: str = "") -> InitResult:
    """Run every scheme on ``setup`` and return the measured, diagnosed :class:`InitResult`.

    ``schemes`` defaults to :data:`DEFAULT_SCHEMES`; ``default`` is always run (first), as the
    verdict is that of the target's own init. ``thresholds`` overrides
    :data:`probes.init.thresholds.DEFAULT_THRESHOLDS`. Bad scheme names, unknown threshold keys and
    ``steps < 1`` raise ValueError before anything runs; a failure to read the batches
    propagates. When ``default`` itself raises, :attr:`InitResult.error` says so (the target
    is broken); any other scheme that raises is only that scheme's error. ``progress`` gets a
    :class:`~audit.probes.progress.Progress` (phase ``scheme NAME (i of n)``) before each
    scheme and after each of its steps. The model ends as it started: its own
    values, the same parameter objects, no gradients, its train/eval mode.
    """
    started = time.perf_counter()
    names = validate_schemes(schemes if schemes else DEFAULT_SCHEMES)
    if "default" in names:
        names.remove("default")
    names.insert(0, "default")
    limits = resolve_thresholds(thresholds)
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    steps = int(steps)
    dev = torch.device(device)
    model = setup.model
    model.to(dev)
    was_training = model.training

    seed_all(seed)
    batches = [to_device(batch, dev) for _, batch in cycle_batches(setup.data, steps)]
    audit = _SchemeRunner(setup, batches, seed, limits)
    results = []
    say = progress or silent
    shared: dict[str, Any] = dict(target=target, steps=steps, seed=seed, device=str(dev), limits=limits,
               started=started)
    try:
        for i, name in enumerate(names, start=1):
            phase = f"scheme {name} ({i} of {len(names)})"
            say(Progress(phase, 0, steps))
            results.append(audit.run(name, lambda done: say(Progress(phase, done, steps))))
        phase = "init seeds of the closest schemes"
        settle(results, _seed_runs(audit, say), limits)
    except Interrupted as exc:  # keep the schemes that finished for the partial report
        if results:
            exc.partial = _result(results, model, audit, **shared)
            exc.partial.error = (f"interrupted by {exc.name} during {phase}: the report covers "
                                 "only the schemes before it")
        raise
    finally:
        restore_state(model, audit.state)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return _result(results, model, audit, **shared)


def _seed_runs(audit: "_SchemeRunner", say: Callable[[Progress], None]
               ) -> Callable[[str, int], list[float]]:
    def run(name: str, init_seed: int) -> list[float]:
        say(Progress(f"scheme {name}, init seed {init_seed + 1}", 0, len(audit.batches)))
        return audit.losses(name, init_seed)
    return run


def _result(results: list[Any], model: Any, audit: "_SchemeRunner", *, target: str, steps: int, seed: int,
            device: str, limits: dict[str, Any], started: float) -> InitResult:
    choice = recommend(results, limits)
    best, reason = choice.scheme, choice.reason
    own = results[0]
    code = scheme_code(best, model, audit.trace or ForwardTrace()) if best else ""
    return InitResult(
        verdict=own.verdict, recommended=best, schemes=results, target=target, steps=steps,
        seed=seed, device=device, environment=environment(device), thresholds=limits,
        recommendation_code=code, recommendation_reason=reason, recommendation=choice,
        # The target's own model failing to train is a broken target, not an unhealthy init.
        error=f"the model as the target built it failed: {own.error}" if own.error else None,
        seconds=time.perf_counter() - started,
    )


class _SchemeRunner:
    """What every scheme shares: the cached batches, the original state (one CPU copy), the
    trace of which nonlinearity follows each layer, and the unit draws (:class:`DrawCache`).

    ``default`` runs first; its measured step doubles as the tracing pass (the probe learns
    the nonlinearities while it measures), so tracing costs no pass of its own.
    """

    def __init__(self, setup: TrainingSetup, batches: list[Any], seed: int, limits: dict[str, Any]):
        self.setup, self.batches, self.seed, self.limits = setup, batches, seed, limits
        model = setup.model
        self.state = snapshot_state(model)
        self.owned = scheme_owned_keys(model)
        self.cache = DrawCache(model)
        self.modules = modules_with_parameters(model)
        self.trace: Optional[ForwardTrace] = None
        self._seed_cache: tuple[Any, ...] = (0, None)  # (init seed, DrawCache) of the seed running

    def _forward(self) -> Any:
        """The forward pass on the first batch that lsuv (and a fallback trace) run. It
        reseeds first, so its dropout masks never depend on how many random numbers the
        scheme drew (a cached draw draws none)."""
        seed_all(self.seed)
        return compute_loss(self.setup, self.batches[0])

    def _ensure_trace(self) -> ForwardTrace:
        """The trace, from a tracing pass of its own if ``default`` did not provide one."""
        if self.trace is None:
            model = self.setup.model
            restore_state(model, self.state)
            model.train()
            seed_all(self.seed)
            try:
                self.trace = trace_forward(model, self._forward)
            except Exception:  # the schemes will fail on the same forward and say why
                self.trace = ForwardTrace()
        return self.trace

    def _apply(self, name: str, init_seed: int, trace: Optional[ForwardTrace]) -> None:
        """Reseed, restore, apply ``name``, reseed again. Init seed 0 is the model's own
        values; another seed first redraws them (:func:`redraw_own`) and draws the scheme's
        weights from its own seed. Reseeding after applying gives every scheme's training the
        same random stream (dropout masks), whatever its init drew."""
        model = self.setup.model
        skip = () if name == "default" else self.owned
        cache = self.cache
        if init_seed:
            if self._seed_cache[0] != init_seed:  # settle() runs the seeds one after another
                self._seed_cache = (init_seed, DrawCache(model))
            cache = self._seed_cache[1]
        seed_all(self.seed if not init_seed else init_seed_value(self.seed, init_seed))
        restore_state(model, self.state, skip=skip)
        if init_seed:
            redraw_own(model, init_seed_value(self.seed, init_seed), skip=skip)
        model.train()
        apply_scheme(model, name, trace or ForwardTrace(), forward=self._forward, cache=cache)
        seed_all(self.seed)
        model.zero_grad(set_to_none=True)

    def _train(self, result: SchemeResult, stepped: Callable[[int], None],
               probe: Optional[FlowProbe]) -> None:
        """Train the cached batches, ``probe`` around the first step; losses into ``result``."""
        model, setup = self.setup.model, self.setup
        optimizer = setup.optimizer(model.parameters())
        scheduler = make_scheduler(setup, optimizer)
        for index, batch in enumerate(self.batches):
            optimizer.zero_grad(set_to_none=True)
            if index == 0 and probe is not None:
                with probe:
                    loss = compute_loss(setup, batch)
                    loss.backward()
                result.layers = probe.collect()
            else:
                loss = compute_loss(setup, batch)
                loss.backward()
            value = float(loss.detach())
            result.loss.append(value)
            if not math.isfinite(value):
                break
            optimizer_step(optimizer, scheduler, step_closure(setup, optimizer, batch, loss))
            stepped(index + 1)

    def run(self, name: str, stepped: Callable[[int], None]) -> SchemeResult:
        """Apply ``name`` (init seed 0), train ``len(batches)`` steps measuring the first,
        diagnose."""
        started = time.perf_counter()
        result = SchemeResult(name=name, verdict="unhealthy")
        tracing = name == "default" and self.trace is None
        try:
            trace = None if tracing else self._ensure_trace()
            self._apply(name, 0, trace)
            probe = FlowProbe(self.setup.model, trace, modules=self.modules,
                              saturation_margin=self.limits["saturation_margin"])
            self._train(result, stepped, probe)
            if tracing:
                self.trace = probe.finish_trace()
        except Exception as exc:  # a scheme that breaks is a result, not a crash of the audit
            result.error = f"{type(exc).__name__}: {exc}"
        result.findings = diagnose(result.layers, result.loss, self.limits, error=result.error)
        result.verdict = "healthy" if not result.findings and result.error is None \
            else "unhealthy"
        result.score = scheme_score(result)
        result.depth_trend = depth_trends(result.layers, self.limits)
        result.seconds = time.perf_counter() - started
        return result

    def losses(self, name: str, init_seed: int) -> list[float]:
        """The loss curve of ``name`` on another init seed (nothing measured; a scheme that
        raises there gives no loss, so it cannot beat the model's own init)."""
        result = SchemeResult(name=name, verdict="unhealthy")
        try:
            self._apply(name, init_seed, self._ensure_trace())
            self._train(result, lambda done: None, None)
        except Exception:  # noqa: BLE001 - recorded as a missing loss
            return []
        return result.loss
