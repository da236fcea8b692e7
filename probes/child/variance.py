"""One run of ``audit variance`` / ``audit compare``: a fresh process that trains plainly.

Started as ``python -m audit.probes.child.variance SPEC.json``. It seeds and builds the target
under the init seed, routes the data, augment and dropout seeds (:mod:`audit.probes.variance.routing`), trains
``steps`` steps with no tracing, evaluates, and writes one JSON object to the spec's ``out``:
``status`` (``ok`` | ``target_error`` | ``crashed``), ``metrics``, ``routing``, ``message``.
Exit status (:class:`audit.probes.errors.ChildExit`): ``OK`` trained; ``TARGET`` the target
could not be loaded; ``CRASH`` training raised.
"""
from __future__ import annotations

from typing import Any, Optional
import json
import math
import os
import sys
import time
import traceback

from audit.probes.errors import ChildExit
from audit.probes.run.spec import VarianceRunSpec, read_spec
from audit.probes.results.records import Status



def tail_length(steps: int) -> int:
    """How many of the last steps the training-loss metric averages: the last quarter."""
    return max(1, steps // 4)


def _train(setup: Any, steps: int, device: Any, streams: Any) -> list[Any]:
    import torch

    from audit.probes.run.training import (compute_loss, cycle_batches, make_scheduler,
                                       optimizer_step, step_closure, to_device)

    model = setup.model
    model.train()
    optimizer = setup.optimizer(model.parameters())
    scheduler = make_scheduler(setup, optimizer)
    batches = cycle_batches(setup.data, steps)
    losses = []
    while True:
        with streams.use("augment"):
            item = next(batches, None)
        if item is None:
            break
        with streams.use("dropout"):
            batch = to_device(item[1], device)
            optimizer.zero_grad(set_to_none=True)
            loss = compute_loss(setup, batch)
            loss.backward()
            optimizer_step(optimizer, scheduler, step_closure(setup, optimizer, batch, loss))
        losses.append(loss.detach().float().reshape(()))
    return torch.stack(losses).cpu().tolist() if losses else []


def metric_values(returned: Any, name: str = "eval") -> dict[str, Any]:
    """``evaluate``'s return as ``{name: float}``: a number is named ``eval``."""
    if isinstance(returned, dict):
        return {str(k): float(v) for k, v in returned.items()}
    return {name: float(returned)}


def _evaluate(setup: Any, streams: Any) -> dict[str, Any]:
    import torch

    if setup.evaluate is None:
        return {}
    with streams.use("evaluate"):
        setup.model.eval()
        with torch.no_grad():
            return metric_values(setup.evaluate(setup.model))


def _load(spec: VarianceRunSpec) -> tuple[Any, Any]:
    """Seed with the init seed, build the target, put it on its device."""
    from audit.probes.errors import TargetError
    from audit.probes.run.target import load_target
    from audit.probes.run.seeding import seed_all
    from audit.probes.run.environment import resolve_device

    seed_all(spec.seeds["init"])
    try:
        device = resolve_device(spec.device)
    except RuntimeError as exc:
        raise TargetError(str(exc)) from None
    setup = load_target(spec.target, input_shape=spec.input_shape,
                        num_classes=spec.num_classes, seed=spec.base_seed, batches=spec.steps)
    if device.type == "cuda":
        import torch

        torch.cuda.init()
    setup.model.to(device)
    return setup, device


def _measure(spec: VarianceRunSpec) -> dict[str, Any]:
    from audit.probes.results import plain
    from audit.probes.variance import routing

    setup, device = _load(spec)
    seeds = spec.seeds
    routes = routing.route_data(setup.data, seeds["data"], seeds["augment"])
    streams = routing.Streams({"augment": seeds["augment"], "dropout": seeds["dropout"],
                               "evaluate": spec.base_seed})
    losses = _train(setup, spec.steps, device, streams)
    tail = losses[-tail_length(len(losses)):]
    metrics = {"loss": sum(tail) / len(tail)} if tail else {}
    metrics.update(_evaluate(setup, streams))
    out = {"status": Status.OK, "metrics": metrics, "steps": len(losses), "device": str(device),
           "routing": plain(routing.fixed_routes()[:1] + routes + routing.fixed_routes()[1:])}
    if not all(math.isfinite(v) for v in metrics.values()):
        out["status"] = Status.NONFINITE
        out["message"] = "a metric is not finite: " + ", ".join(
            f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
    if spec.environment:
        from audit.probes.run.knobs import describe_run as environment

        out["environment"] = environment(device)
    return out


def _where(exc: BaseException) -> Optional[str]:
    from audit.probes.run.processes import Frame, user_frame

    found = user_frame([Frame(f.filename, f.lineno or 0, f.name)
                        for f in reversed(traceback.extract_tb(exc.__traceback__))])
    return found.where if found else None


def run(spec: VarianceRunSpec) -> tuple[Any, ...]:
    """``(exit status, report)`` of one run."""
    from audit.probes.errors import TargetError

    try:
        return ChildExit.OK, _measure(spec)
    except TargetError as exc:
        return ChildExit.TARGET, {"status": Status.TARGET_ERROR, "message": str(exc)}
    except Exception as exc:  # the user's training raised
        return ChildExit.CRASH, {"status": Status.CRASHED, "message": f"{type(exc).__name__}: {exc}",
                            "where": _where(exc)}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = read_spec(VarianceRunSpec, argv[0])
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    started = time.monotonic()
    code, report = run(spec)
    report["seconds"] = round(time.monotonic() - started, 3)
    with open(spec.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
