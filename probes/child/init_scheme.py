"""One scheme of ``audit init -- python train.py``, inside the script's own process.

Started by :mod:`audit.probes.init.script` as::

    python -m audit.probes.child.init_scheme SPEC.json -- train.py args...

The script runs as ``python train.py`` would run it. The model audited is the module whose
parameters the script's optimizer holds, found at its first training forward (gradients on,
called from outside any other module). Right before that forward the scheme re-initializes it
in place (``default`` leaves the script's own init as it is; ``lsuv`` tunes on that very batch),
with the random streams and buffers put back so the script trains on as it would; the first
step's per-layer statistics are measured on the way, the loss of each step is kept, and the run
stops after ``steps`` optimizer steps. The result is one JSON file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import traceback
from typing import Any, Optional

import torch
from torch import nn

from audit.probes.errors import ChildExit
from audit.probes.run import fingerprint as fp
from audit.probes.run import program as script_runner
from audit.probes.run.environment import describe as environment
from audit.probes.init.flow import FlowProbe, modules_with_parameters, trace_forward
from audit.probes.run.processes import Frame, user_frame
from audit.probes.results.records import Status
from audit.probes.run.spec import SchemeRunSpec, read_spec
from audit.probes.init.schemes import (DrawCache, apply_scheme, init_seed_value, redraw_own,
                                       restore_state, scheme_code, scheme_owned_keys,
                                       snapshot_state)



class Stop(BaseException):
    """Raised from the optimizer's step hook once the steps asked for are made."""


def _frames(summary: list[Any]) -> list[Any]:
    return [Frame(f.filename, f.lineno or 0, f.name) for f in reversed(summary)]


def user_place() -> Optional[str]:
    """``file:line`` of the innermost frame of the user's code on the stack."""
    found = user_frame(_frames(traceback.extract_stack()[:-1]))
    return found.where if found else None


def _rng_state() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Any, ...]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class SchemeRun:
    """The hooks of one scheme's run and what they measured."""

    def __init__(self, spec: SchemeRunSpec):
        self.scheme, self.steps = spec.scheme, int(spec.steps)
        self.margin = float(spec.saturation_margin)
        self.init_seed, self.seed = int(spec.init_seed), int(spec.seed)
        self.optimizers: list[Any] = []  # (optimizer, {id(param)}, where)
        self.model: Optional[nn.Module] = None
        self.probe: Optional[FlowProbe] = None
        self.out: dict[str, Any] = {"scheme": self.scheme, "layers": [], "loss": [], "error": None,
                          "status": "no_step", "code": "", "optimizer_where": None,
                          "model": None, "init_fingerprint": None}
        self.depth, self.busy = 0, False
        self.last_loss: Optional[float] = None
        self.handles: list[Any] = []
        self.originals: dict[str, Any] = {}

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        run = self
        init = torch.optim.Optimizer.__init__

        def optimizer_init(opt, params, *args, **kwargs):
            init(opt, params, *args, **kwargs)
            ids = {id(p) for group in opt.param_groups for p in group["params"]}
            run.optimizers.append((opt, ids, user_place()))

        backward = torch.autograd.backward

        def autograd_backward(tensors, *args, **kwargs):
            first = tensors[0] if isinstance(tensors, (list, tuple)) else tensors
            if isinstance(first, torch.Tensor) and first.numel() == 1:
                run.last_loss = float(first.detach())
            return backward(tensors, *args, **kwargs)

        self.originals = {"init": init, "backward": backward}
        # patched to see the script's optimizers
        torch.optim.Optimizer.__init__ = optimizer_init  # type: ignore[method-assign, assignment]
        torch.autograd.backward = autograd_backward
        from torch.nn.modules import module as module_mod
        from torch.optim import optimizer as optim_mod

        self.handles = [module_mod.register_module_forward_pre_hook(self.pre_forward),
                        module_mod.register_module_forward_hook(self.post_forward),
                        optim_mod.register_optimizer_step_pre_hook(self.pre_step),
                        optim_mod.register_optimizer_step_post_hook(self.post_step)]

    def uninstall(self) -> None:
        if self.originals:
            torch.optim.Optimizer.__init__ = self.originals["init"]  # type: ignore[method-assign]  # the original back
            torch.autograd.backward = self.originals["backward"]
            self.originals = {}
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.probe is not None:
            self.probe.__exit__(None, None, None)

    # ------------------------------------------------------------------ hooks
    def pre_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.depth += 1
        if self.model is None and not self.busy and self.depth == 1 and torch.is_grad_enabled():
            params = {id(p) for p in module.parameters()}
            held = next((o for o in self.optimizers if params and params & o[1]), None)
            if held is not None:
                self.start(module, args, held[2])

    def post_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.depth = max(self.depth - 1, 0)

    def start(self, model: nn.Module, args: tuple[Any, ...], where: Optional[str]) -> None:
        """Re-initialize by the scheme (streams and buffers put back) and start measuring."""
        self.model, self.busy = model, True
        device = next(model.parameters()).device
        self.out.update(optimizer_where=where, model=type(model).__name__, status="started",
                        environment=environment(str(device)), device=str(device),
                        init_fingerprint=hashlib.sha1(fp.as_text(fp.gather(
                            [fp.fingerprint(p.detach()) for p in model.parameters()])).encode())
                        .hexdigest()[:16])
        rng, state, depth = _rng_state(), snapshot_state(model), self.depth
        self.depth = 0
        try:
            forward = lambda: model(*args)  # noqa: E731
            trace = trace_forward(model, forward)
            restore_state(model, state)
            if self.init_seed:  # another draw, from the audit's seed, not the script's stream
                value = init_seed_value(self.seed, self.init_seed)
                torch.manual_seed(value)
                redraw_own(model, value, skip=() if self.scheme == "default"
                           else scheme_owned_keys(model))
            apply_scheme(model, self.scheme, trace, forward=forward, cache=DrawCache(None))
            self.out["code"] = scheme_code(self.scheme, model, trace)
        finally:
            self.depth, self.busy = depth, False
            _set_rng_state(rng)
        self.probe = FlowProbe(model, trace, modules=modules_with_parameters(model),
                               saturation_margin=self.margin)
        self.probe.__enter__()

    def pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.probe is not None:
            probe, self.probe = self.probe, None
            probe.__exit__(None, None, None)
            self.out["layers"] = [dataclasses.asdict(layer) for layer in probe.collect()]

    def post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.model is None:
            return
        self.out["loss"].append(self.last_loss)
        self.out["status"] = Status.OK
        finite = self.last_loss is not None and self.last_loss == self.last_loss \
            and abs(self.last_loss) != float("inf")
        if len(self.out["loss"]) >= self.steps or not finite:
            raise Stop()


def run(spec: SchemeRunSpec, program: script_runner.Program) -> dict[str, Any]:
    """Run the script under one scheme; the measurements as a plain dict."""
    import runpy

    scheme = SchemeRun(spec)
    sys.argv = [program.target, *program.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(program.path)) if program.path
                    else os.getcwd())
    scheme.install()
    try:
        if program.module:
            runpy.run_module(program.module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(program.target, run_name="__main__")
    except Stop:
        pass
    except SystemExit as exc:
        if exc.code not in (None, 0) and scheme.out["status"] != Status.OK:
            scheme.out["error"] = f"the script exited with status {exc.code!r}"
    except Exception as exc:  # the script (or the scheme) broke: a result, with the place
        found = user_frame(_frames(traceback.extract_tb(exc.__traceback__)))
        scheme.out["error"] = f"{type(exc).__name__}: {exc}" + (f" (at {found.where})" if found else "")
    finally:
        scheme.uninstall()
    return scheme.out


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    spec_path, rest = argv[0], argv[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    spec = read_spec(SchemeRunSpec, spec_path)
    if spec.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    out = run(spec, script_runner.parse(rest, interpreter=False))
    with open(spec.result, "w", encoding="utf-8") as fh:
        json.dump(out, fh, default=float)
    sys.stdout.flush()
    return ChildExit.OK


if __name__ == "__main__":
    sys.exit(main())
