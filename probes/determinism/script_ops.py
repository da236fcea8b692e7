"""The CUDA op scan in script mode: one step of the first run, recorded while it trains.

A script cannot be asked to repeat a step, so the scan is made during the script's own second
step (the models are named by then): from the first call of a traced model to the end of the
backward pass, under the same recorder as target mode's extra pass
(:class:`~probes.determinism.cuda_ops.OpRecorder`, which passes every op through unchanged:
the run's numbers are those of an unrecorded run). The result is the table's list, with
modules; the confirming pass under ``use_deterministic_algorithms(True)`` is left out, since
it would change the kernels of a compared run (target mode makes it on a GPU).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from audit.probes.determinism.cuda_ops import ModuleMap, OpRecorder, cublas_needed, summarize
from audit.probes.determinism.cuda_ops_table import SOURCE
from audit.probes.results.cuda_ops import CudaOpsScan
from audit.probes.results.records import Record
from audit.probes.run.training import tensors_in

WAITING, RECORDING, DONE = "waiting", "recording", "done"


class StepScan:
    """Records one step's ops: :meth:`start` at a model's top-level call, :meth:`backward`
    before its backward pass, :meth:`finish` after it (or when the script ends); writes one
    ``cuda_ops`` record. Never raises: a failure is the scan's ``error``."""

    def __init__(self, writer):
        self.writer = writer
        self.state = WAITING
        self.modules: Optional[ModuleMap] = None
        self.recorder: Optional[OpRecorder] = None

    def start(self, module_names: dict[str, Any], module: Any, args: Any) -> None:
        """At the top-level call of ``module`` (a traced model) with ``args``: its own
        pre-hook has run, so the call is entered here."""
        if self.state != WAITING:
            return
        self.state = RECORDING
        try:
            self.modules = ModuleMap(named=[(name, m) for m, name in module_names.items()])
            if module in module_names:
                self.modules.entered(module_names[module], args)
            self.recorder = OpRecorder(self.modules, quiet=True)
            self.recorder.__enter__()
        except Exception as exc:  # the run goes on unscanned
            self._close()
            self._write(None, f"{type(exc).__name__}: {exc}")

    def backward(self, tensors: Any) -> None:
        if self.state != RECORDING or self.recorder is None:
            return
        assert self.modules is not None  # start made it before the recorder
        for t in tensors_in(tensors):
            if t.grad_fn is not None:
                self.modules.hook_graph(t)
        self.recorder.backward = True

    def finish(self, device: torch.device) -> None:
        """After the backward pass (or at the script's end, with what was recorded)."""
        if self.state != RECORDING or self.recorder is None:
            return
        calls = self.recorder.calls
        self._close()
        try:
            self._write(summarize(calls, str(device), cublas_needed()), None)
        except Exception as exc:
            self._write(None, f"{type(exc).__name__}: {exc}")

    def _close(self) -> None:
        self.state = DONE
        recorder, self.recorder = self.recorder, None
        try:
            if recorder is not None:
                recorder.__exit__(None, None, None)
        finally:
            if self.modules is not None:
                self.modules.close()

    def _write(self, scan: Optional[CudaOpsScan], error: Optional[str]) -> None:
        if scan is None:
            scan = CudaOpsScan(torch=torch.__version__, device="", source=SOURCE, error=error)
        self.writer.write({"type": Record.CUDA_OPS, "scan": scan.to_dict()})
