"""Per-layer signal flow: which nonlinearity follows each layer, and what one training step does.

Two uses of one probe, :class:`FlowProbe`:

* ``trace_forward(model, forward)`` runs one probing forward pass (no grad) and returns a
  :class:`ForwardTrace`: the modules with parameters in the order they execute, and for each
  the nonlinearity that actually follows it. The schemes use it to pick gains. (A measuring
  probe records the same trace, :meth:`FlowProbe.finish_trace`, so the init audit takes it
  from the ``default`` scheme's measured step instead of a pass of its own.)
* ``FlowProbe(model, trace)`` wrapped around the forward *and* backward of a training step
  measures, per module with parameters: weight and weight-gradient norms, the output's mean,
  std and non-finite values, the gradient with respect to the output, and, on the output of
  the activation that follows the layer, the dead-unit and saturated fractions.
  :meth:`FlowProbe.collect` then reads everything with one host synchronisation.

What follows a layer is found from data flow, not names. Module forward hooks tag each
layer's output tensor; a :class:`torch.overrides.TorchFunctionMode` sees every torch call of
the forward pass (functional ``F.relu`` and ``torch.tanh`` as much as the ``F.relu`` inside
``nn.ReLU``), carries tags through shape-only and normalizing operations (normalization,
dropout, pooling, reshapes, residual additions, identity), and the first activation that
consumes a tagged tensor is the layer's nonlinearity. A layer whose output reaches no
activation that way is ``linear``.

The gradient with respect to a module's output is taken by a tensor hook registered on the
output inside the forward hook. ``register_full_backward_hook`` raises on torchvision's
``ReLU(inplace=True)`` right after a conv ("Output 0 of BackwardHookFunction is a view and is
being modified inplace"); a tensor hook registered before the in-place op receives the gradient
with respect to the pre-modification output, which is the one wanted (checked against the
same model without in-place ops). Modules called several times are measured on their first
call. Every hook is removed in a ``finally``.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from audit.probes.results import LayerStats

#: Modules whose ``weight`` the schemes re-initialize ("weight layers"); depth counts them.
WEIGHT_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)

#: Activation op name (torch function name without underscores) -> ``calculate_gain`` name.
#: Smooth ReLU relatives take the ReLU gain; hard tanh/sigmoid take their smooth cousins'.
ACTIVATION_GAINS = {
    "relu": "relu", "relu6": "relu", "rrelu": "relu", "gelu": "relu", "silu": "relu",
    "elu": "relu", "celu": "relu", "mish": "relu", "hardswish": "relu", "softplus": "relu",
    "leaky_relu": "leaky_relu", "prelu": "leaky_relu",
    "tanh": "tanh", "hardtanh": "tanh", "softsign": "tanh",
    "sigmoid": "sigmoid", "hardsigmoid": "sigmoid",
    "selu": "selu",
}
#: Activations whose negative side is exactly zero: a unit can be dead.
DEAD_OPS = frozenset({"relu", "relu6"})
#: Bounded activations and their bounds: a unit can saturate.
SATURATING_OPS = {"tanh": (-1.0, 1.0), "hardtanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0),
                  "hardsigmoid": (0.0, 1.0)}
#: Operations between a layer and its activation that do not change which activation follows.
PASSTHROUGH_OPS = frozenset({
    # normalization and dropout
    "batch_norm", "group_norm", "layer_norm", "instance_norm", "rms_norm",
    "local_response_norm", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout",
    # pooling and resampling
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d",
    "lp_pool2d", "interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle", "pad",
    # shape, copies, residual sums and scalings
    "view", "reshape", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze", "permute",
    "transpose", "t", "getitem", "chunk", "split", "narrow", "select", "expand", "repeat",
    "clone", "to", "float", "half", "bfloat16", "double", "type", "cat", "concat", "stack",
    "add", "iadd", "radd", "sub", "isub", "mul", "imul", "rmul", "div", "truediv",
    "itruediv", "mean",
})


@dataclass(frozen=True)
class Nonlinearity:
    """The activation that follows a layer: its op, ``calculate_gain`` name and parameter."""

    op: str = "linear"
    gain_name: str = "linear"
    param: Optional[float] = None

    @property
    def gain(self) -> float:
        return nn.init.calculate_gain(self.gain_name, self.param)  # type: ignore[arg-type]  # a name torch checks


LINEAR = Nonlinearity()


@dataclass
class ForwardTrace:
    """What one probing forward pass saw."""

    order: list[Any] = field(default_factory=list)  # names of modules with parameters, run order
    weight_layers: list[Any] = field(default_factory=list)  # the weight layers among them, in order
    nonlinearity: dict[str, Any] = field(default_factory=dict)  # name -> Nonlinearity
    types: dict[str, Any] = field(default_factory=dict)  # name -> class name

    def depths(self) -> dict[str, Any]:
        """name -> depth: index among weight layers; other modules take the last one's."""
        out, depth = {}, -1
        weight = set(self.weight_layers)
        for name in self.order:
            if name in weight:
                depth += 1
            out[name] = max(depth, 0)
        return out


def is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, WEIGHT_LAYER_TYPES) and isinstance(
        getattr(module, "weight", None), torch.Tensor)


def modules_with_parameters(model: nn.Module) -> dict[str, Any]:
    """name -> module, for modules that hold parameters themselves."""
    return {name: m for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None}


def _op_name(func: Any) -> str:
    return getattr(func, "__name__", "").strip("_")


def _tensors(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, torch.Tensor):
                yield item


def _first_tensor(obj: Any) -> Optional[torch.Tensor]:
    for t in _tensors(obj):
        return t
    return None


class _DataflowMode(TorchFunctionMode):
    """Carries layer tags through pass-through ops and reports activations that consume them."""

    def __init__(self, on_activation: Callable[..., Any]):
        super().__init__()
        self._tags: dict[int, Any] = {}  # id(tensor) -> (weakref, frozenset of names)
        self._on_activation = on_activation
        self.paused = False

    def tags_of(self, tensor: torch.Tensor) -> frozenset[Any]:
        entry = self._tags.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        return frozenset()

    def tag(self, tensor: torch.Tensor, names: frozenset[Any]) -> None:
        if names:
            self._tags[id(tensor)] = (weakref.ref(tensor), names)
        else:
            self._tags.pop(id(tensor), None)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.paused or not self._tags:
            return out
        op = _op_name(func)
        is_act = op in ACTIVATION_GAINS
        if not is_act and op not in PASSTHROUGH_OPS:
            return out
        names: frozenset[str] = frozenset()
        for arg in (*args, *kwargs.values()):
            for t in _tensors(arg):
                names |= self.tags_of(t)
        if not names:
            return out
        if is_act:
            result = _first_tensor(out)
            if result is not None:
                self._on_activation(names, op, args, kwargs, result)
                self.tag(result, frozenset())  # in-place ops return their input
        else:
            for t in _tensors(out):
                self.tag(t, names)
        return out


def _activation_param(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[float]:
    if op == "leaky_relu":
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return float(slope)
    if op == "prelu":
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        return float(weight.detach().float().mean()) if weight is not None else 0.25
    return None


def _unit_dim(module: nn.Module, out: torch.Tensor) -> int:
    """The axis that indexes units: channels for convs, features (last axis) for linears."""
    if isinstance(module, nn.modules.conv._ConvNd) and out.dim() >= 2:
        return 1
    return out.dim() - 1


def dead_fraction(x: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Fraction of units (slices along ``unit_dim``) never positive on the batch: for ReLU
    outputs (>= 0), units exactly zero for every sample and position. A 0-d tensor.

    One max-reduction over every axis but ``unit_dim``, with no copy of the activation.
    """
    unit_dim = unit_dim % x.dim()
    dims = tuple(d for d in range(x.dim()) if d != unit_dim)
    peak = x.amax(dim=dims) if dims else x
    return peak.le(0).float().mean()


def saturated_fraction(x: torch.Tensor, lo: float, hi: float, margin: float) -> torch.Tensor:
    """Fraction of elements within ``margin * (hi - lo) / 2`` of a bound (for tanh, whose half
    range is 1, ``margin`` is in output units: ``|y| >= 1 - margin``). A 0-d tensor."""
    band = margin * (hi - lo) / 2.0
    return ((x <= lo + band) | (x >= hi - band)).float().mean()


class FlowProbe:
    """Hooks that trace (``measure=False``) or measure one forward/backward; see the module doc.

    Use as a context manager around the forward and the backward of one step, then call
    :meth:`collect` (measuring) or :meth:`finish_trace` (either). ``trace`` is a previous
    trace whose nonlinearities label the layers; ``modules`` the result of
    :func:`modules_with_parameters`, when the caller keeps it across probes.
    """

    def __init__(self, model: nn.Module, trace: Optional[ForwardTrace] = None,
                 measure: bool = True, saturation_margin: float = 0.01,
                 modules: Optional[dict[str, Any]] = None):
        self.model = model
        self.measure = measure
        self.margin = float(saturation_margin)
        self.modules = modules if modules is not None else modules_with_parameters(model)
        self.trace = ForwardTrace()
        self._known = trace
        self._stats: dict[str, Any] = {}  # name -> {stat: 0-d tensor}
        self._acts: dict[str, Any] = {}  # name -> Nonlinearity seen in this pass
        self._handles: list[Any] = []
        self._mode = _DataflowMode(self._on_activation)

    # -------------------------------------------------------------- context
    def __enter__(self) -> "FlowProbe":
        try:
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
            self._mode.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._remove()
            self._mode._tags.clear()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -------------------------------------------------------------- hooks
    def _hook(self, name: str) -> Callable[..., None]:
        module = self.modules[name]
        weighted = is_weight_layer(module)

        def hook(mod, args, output):
            mode = self._mode
            mode.paused = True
            try:
                tensors = [t for t in _tensors(output) if t.is_floating_point()]
                first_call = name not in self.trace.types
                if first_call:
                    self.trace.order.append(name)
                    self.trace.types[name] = type(mod).__name__
                    if weighted:
                        self.trace.weight_layers.append(name)
                    if self.measure and tensors:
                        self._measure_output(name, tensors[0])
                # Tag: this module plus whatever its output already carried (e.g. a norm
                # layer's output carries the conv before it).
                own = frozenset((name,))
                for t in tensors:
                    mode.tag(t, own | (frozenset() if weighted else mode.tags_of(t)))
            finally:
                mode.paused = False

        return hook

    def _measure_output(self, name: str, out: torch.Tensor) -> None:
        x = out.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        stats = self._stats.setdefault(name, {})
        # Mean and L2 norm are two fast reductions (torch.std_mean is ~7x slower on a CPU);
        # the std follows on the host. A non-finite mean or norm stands for non-finite
        # values, with no extra pass over x (finite values whose statistics overflow float32
        # are treated alike).
        stats["act_mean"] = x.mean()
        stats["act_norm"] = torch.linalg.vector_norm(x)
        stats["numel"] = x.numel()
        if out.requires_grad:
            def grad_hook(grad, stats=stats):
                stats["out_grad_norm"] = torch.linalg.vector_norm(grad.detach().float())
            self._handles.append(out.register_hook(grad_hook))

    def _on_activation(self, names: frozenset[Any], op: str, args: Any, kwargs: Any, out: torch.Tensor) -> None:
        fresh = [n for n in names if n not in self._acts]
        if not fresh:
            return
        act = Nonlinearity(op, ACTIVATION_GAINS[op], _activation_param(op, args, kwargs))
        for n in fresh:
            self._acts[n] = act
        if not self.measure or not out.is_floating_point():
            return
        x = out.detach()
        for n in fresh:
            module = self.modules.get(n)
            if module is None or not is_weight_layer(module) or x.dim() < 1 or x.numel() == 0:
                continue
            stats = self._stats.setdefault(n, {})
            if op in DEAD_OPS:
                dim = _unit_dim(module, x)
                stats["dead"] = dead_fraction(x, dim)
                stats["units"] = x.shape[dim]
            elif op in SATURATING_OPS:
                lo, hi = SATURATING_OPS[op]
                stats["sat"] = saturated_fraction(x, lo, hi, self.margin)

    # -------------------------------------------------------------- results
    def finish_trace(self) -> ForwardTrace:
        """The trace, with nonlinearities, after a tracing pass."""
        self.trace.nonlinearity = {n: self._acts.get(n, LINEAR) for n in self.trace.order}
        return self.trace

    def _param_norms(self, trace: Any) -> dict[str, Any]:
        """Per layer: its parameters' weight norms and gradient norms (tensors, no sync)."""
        weights, grads, owners = [], [], []
        for name in trace.order:
            module = self.modules[name]
            weight = getattr(module, "weight", None)
            params = [weight] if isinstance(weight, torch.Tensor) else \
                list(module.parameters(recurse=False))
            for p in params:
                weights.append(p.detach())
                grads.append(p.grad.detach() if p.grad is not None else None)
                owners.append(name)
        g_iter = iter(_norms([g for g in grads if g is not None]))
        per_layer: dict[str, Any] = {}
        for name, w, g in zip(owners, _norms(weights), grads):
            entry = per_layer.setdefault(name, {"w": [], "g": [], "missing": False})
            entry["w"].append(w)
            if g is None:
                entry["missing"] = True
            else:
                entry["g"].append(next(g_iter))
        return per_layer

    def _numbers(self, trace: Any) -> dict[tuple[str, str], Any]:
        """Every statistic as a float, keyed by (layer, statistic): one host sync."""
        per_layer = self._param_norms(trace)
        keys = ("act_mean", "act_norm", "out_grad_norm", "dead", "sat", "w_norm", "g_norm")
        values: list[torch.Tensor] = []
        slots: list[tuple[str, str]] = []
        for name in trace.order:
            stats = self._stats.setdefault(name, {})
            entry = per_layer[name]
            stats["w_norm"] = _combine(entry["w"])
            if entry["g"] and not entry["missing"]:
                stats["g_norm"] = _combine(entry["g"])
            for key in keys:
                if isinstance(stats.get(key), torch.Tensor):
                    slots.append((name, key))
                    values.append(stats[key])
        if not values:
            return {}
        device = values[0].device
        return dict(zip(slots, torch.stack([v.to(device, torch.float32) for v in values]).tolist()))

    def _layer(self, name: str, trace: Any, numbers: dict[tuple[str, str], Any], depth: int,
               known: dict[str, Any]) -> LayerStats:
        get = lambda key: numbers.get((name, key))  # noqa: E731
        w_norm, g_norm, out_grad = get("w_norm"), get("g_norm"), get("out_grad_norm")
        act_mean, act_norm = get("act_mean"), get("act_norm")
        numel = self._stats[name].get("numel")
        nonfinite = any(v is not None and not math.isfinite(v)
                        for v in (act_mean, act_norm, w_norm, g_norm, out_grad))
        nonlin = known.get(name) or trace.nonlinearity.get(name, LINEAR)
        return LayerStats(
            name=name, type=trace.types[name], depth=depth,
            grad_norm=g_norm, weight_norm=w_norm, act_mean=act_mean,
            act_std=_std(act_mean, act_norm, numel),
            dead_fraction=get("dead"), saturated_fraction=get("sat"),
            grad_weight_ratio=g_norm / w_norm if g_norm is not None and w_norm else None,
            output_grad_norm=out_grad,
            output_grad_rms=(out_grad / math.sqrt(numel) if out_grad is not None and numel else None),
            nonlinearity=nonlin.op, nonfinite=bool(nonfinite),
            weight_layer=name in set(trace.weight_layers), units=self._stats[name].get("units"))

    def collect(self) -> list[Any]:
        """LayerStats per module with parameters, in execution order; one host sync."""
        trace = self.finish_trace()
        known = self._known.nonlinearity if self._known else {}
        depths = trace.depths()
        numbers = self._numbers(trace)
        return [self._layer(name, trace, numbers, depths[name], known) for name in trace.order]


def _std(mean: Optional[float], norm: Optional[float], numel: Optional[int]) -> Optional[float]:
    """Population std from the mean and the L2 norm: sqrt(norm^2 / n - mean^2). The two
    reductions are float32, so the std loses relative precision as (mean / std)^2 grows
    (about 1 % at a mean of 100 std, which no layer output worth judging has)."""
    if mean is None or norm is None or not numel:
        return None
    if not (math.isfinite(mean) and math.isfinite(norm)):
        return math.nan
    return math.sqrt(max(norm * norm / numel - mean * mean, 0.0))


def _norms(tensors: list[Any]) -> list[Any]:
    """L2 norm of each tensor as 0-d float32 tensors, batched per device and dtype."""
    if not tensors:
        return []
    out: list[Any] = [None] * len(tensors)
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    for idx in groups.values():
        norms = torch._foreach_norm([tensors[i] for i in idx])
        for i, n in zip(idx, norms):
            out[i] = n.float()
    return out


def _combine(norms: list[Any]) -> torch.Tensor:
    """The joint L2 norm of several tensors from their norms."""
    if len(norms) == 1:
        return norms[0]
    return torch.linalg.vector_norm(torch.stack(norms))


def trace_forward(model: nn.Module, forward: Callable[[], Any]) -> ForwardTrace:
    """Run ``forward()`` once under ``no_grad`` and return what follows each layer."""
    probe = FlowProbe(model, measure=False)
    with torch.no_grad(), probe:
        forward()
    return probe.finish_trace()
