"""Initialization schemes, applied in place to a model, and the code that applies them.

Scheme names (contract): ``default``, ``kaiming_normal``, ``kaiming_uniform``,
``xavier_normal``, ``xavier_uniform``, ``orthogonal``, ``lsuv`` and ``normal:STD``.

Every scheme but ``default`` sets the weight of each weight layer (Conv1d/2d/3d,
ConvTranspose1d/2d/3d, Linear), zeroes its bias, gives normalization layers (BatchNorm*,
GroupNorm, LayerNorm, InstanceNorm, RMSNorm) weight 1 and bias 0 and resets BatchNorm running
statistics; other parameters (embeddings, recurrent cells, ...) keep their values. The
tensors are written in place: a parameter keeps its identity, and the model is never copied.
``default`` is the model as the target built it: the runner keeps one CPU copy of the original
``state_dict`` (:func:`snapshot_state`) and reloads it (:func:`restore_state`) before every scheme.

Gains follow the nonlinearity that actually follows each layer, as a traced forward pass
found it (:class:`audit.probes.init.flow.ForwardTrace`; ``torch.nn.init.calculate_gain``):

* ``kaiming_normal`` / ``kaiming_uniform``: He et al. 2015, ``mode="fan_in"``, std
  ``gain / sqrt(fan_in)`` (uniform bound ``sqrt(3)`` times that); ``leaky_relu`` uses its slope.
* ``orthogonal``: Saxe et al. 2014, a (semi-)orthogonal matrix times the gain.
* ``xavier_normal`` / ``xavier_uniform``: Glorot & Bengio 2010 as published and as PyTorch's
  default ``gain=1``: std ``sqrt(2 / (fan_in + fan_out))``. Deliberately no ReLU gain: with
  it, Xavier on square layers *is* Kaiming, and the comparison would hide what the published
  scheme does to a deep ReLU net (halve the signal's variance at every layer).
* ``lsuv``: Mishkin & Matas 2016: orthogonal (gain 1), then, layer by layer in execution
  order, divide the weight by the square root of the layer's output variance on a data batch
  until it is 1 within ``tol=0.1``, at most ``max_iter=10`` times per layer (the paper's
  values), all in one forward pass under ``no_grad`` (see :func:`lsuv_scale`).
* ``normal:STD``: weights from N(0, STD^2).

Fans follow PyTorch's convention (``nn.init._calculate_fan_in_and_fan_out``; for a
ConvTranspose that is ``weight.size(1) * kernel``), so the printed ``nn.init`` lines
(:func:`scheme_code`) draw from exactly the distributions that were measured. Within one
audit the schemes share their random draws (:class:`DrawCache`).
"""
from __future__ import annotations

import math
import zlib
from collections import Counter, OrderedDict
from typing import Any, Callable, Iterable, Optional, cast

import torch
from torch import nn

from audit.probes.init.flow import LINEAR, ForwardTrace, is_weight_layer
from audit.probes.init.scheme_names import VALID, parse_scheme

NORM_TYPES = tuple(t for t in (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm, getattr(nn, "RMSNorm", None)) if t is not None)

LSUV_TOL = 0.1  # Mishkin & Matas 2016, Tol_var
LSUV_MAX_ITER = 10  # Mishkin & Matas 2016, T_max



def snapshot_state(model: nn.Module) -> dict[str, Any]:
    """One CPU copy of the model's ``state_dict`` (the ``default`` scheme)."""
    state = model.state_dict()
    copy = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)  # module versions some loaders rely on
    if metadata is not None:
        copy._metadata = metadata  # type: ignore[attr-defined]  # as Module.state_dict sets it
    return copy


def restore_state(model: nn.Module, state: dict[str, Any], skip: Iterable[Any] = ()) -> None:
    """Copy ``state`` back into the model's own tensors (their identity is kept).

    Without ``skip``: ``load_state_dict``, exactly as saved. With ``skip`` (the entries the
    next scheme overwrites anyway, :func:`scheme_owned_keys`): a plain copy of the others.
    """
    skip = set(skip)
    if not skip:
        model.load_state_dict(state)
        return
    live: dict[str, torch.Tensor] = dict(model.named_parameters())
    live.update(model.named_buffers())
    with torch.no_grad():
        for key, value in state.items():
            if key not in skip and isinstance(live.get(key), torch.Tensor):
                live[key].copy_(value)


def init_seed_value(seed: int, init_seed: int) -> int:
    """The random seed of init seed ``init_seed`` (>= 1) of an audit run with ``seed``: apart
    from the training seed and from the other init seeds."""
    return (int(seed) * 1_000_003 + 7919 * int(init_seed)) % 2**32


def redraw_own(model: nn.Module, seed: int, skip: Iterable[Any] = ()) -> None:
    """Another draw of the model's own init, in place: each parameter's values moved among its
    units by random permutations of its first two dimensions (rows and columns; a vector's
    entries), drawn from ``seed`` and the parameter's name.

    For the i.i.d. inits nearly every model uses (PyTorch's defaults, ``normal_(0, 0.02)``,
    Kaiming, Xavier) a permuted tensor is exactly as likely as the original, so this is a
    fresh draw from the model's own scheme without knowing its code; constants (zeros, ones)
    stay as they are and orthogonal matrices stay orthogonal. ``skip``: parameter names left
    alone (what the next scheme overwrites anyway).
    """
    skip = set(skip)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in skip or param.numel() <= 1:
                continue
            # Per parameter, so a parameter's draw does not depend on which others are skipped:
            # the schemes that keep it (embeddings) get the model's own draw of the same seed.
            generator = torch.Generator().manual_seed(
                (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
            value = param.detach()
            for dim in range(min(value.ndim, 2)):
                order = torch.randperm(value.size(dim), generator=generator)
                value = value.index_select(dim, order.to(value.device))
            param.copy_(value)


def scheme_owned_keys(model: nn.Module) -> set[str]:
    """``state_dict`` entries every scheme but ``default`` sets itself: weight layers' weight
    and bias, normalization layers' affine parameters and running statistics."""
    owned: set[str] = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_weight_layer(module):
            owned.update(prefix + k for k in ("weight", "bias") if
                         isinstance(getattr(module, k, None), torch.Tensor))
        elif isinstance(module, NORM_TYPES):
            keys = ["weight", "bias"]
            if getattr(module, "track_running_stats", False):
                keys += ["running_mean", "running_var", "num_batches_tracked"]
            owned.update(prefix + k for k in keys
                         if isinstance(getattr(module, k, None), torch.Tensor))
    return owned


def reset_norm(module: nn.Module) -> None:
    """Weight 1, bias 0, running statistics reset."""
    with torch.no_grad():
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            module.weight.fill_(1.0)  # type: ignore[operator]  # a tensor (stubs: Tensor | Module)
        if isinstance(getattr(module, "bias", None), torch.Tensor):
            module.bias.zero_()  # type: ignore[operator]  # a tensor (stubs: Tensor | Module)
    if getattr(module, "track_running_stats", False) and hasattr(module, "reset_running_stats"):
        module.reset_running_stats()  # type: ignore[operator]  # a norm layer's method


#: Schemes that differ only by a per-layer scale share one unit draw ("family").
FAMILY = {"kaiming_normal": "normal", "xavier_normal": "normal", "normal": "normal",
          "kaiming_uniform": "uniform", "xavier_uniform": "uniform",
          "orthogonal": "orthogonal", "lsuv": "orthogonal"}


def fans(weight: torch.Tensor) -> tuple[Any, ...]:
    """``(fan_in, fan_out)`` as ``torch.nn.init`` computes them: ``size(1)`` resp. ``size(0)``
    times the receptive field (for a ConvTranspose, PyTorch's convention: ``size(1)`` is
    ``out_channels / groups``)."""
    if weight.dim() < 2:
        raise ValueError("fan in and fan out need a weight with at least 2 dimensions")
    receptive = 1
    for size in weight.shape[2:]:
        receptive *= int(size)
    return int(weight.shape[1]) * receptive, int(weight.shape[0]) * receptive


def weight_scale(kind: str, weight: torch.Tensor, gain_name: str = "linear",
                 param: Optional[float] = None, std: Optional[float] = None) -> float:
    """The factor that turns the family's unit draw into the scheme's weight:

    * kaiming_normal: ``gain / sqrt(fan_in)``; kaiming_uniform: ``sqrt(3)`` times that
      (the bound of U(-b, b) with that std);
    * xavier_normal: ``sqrt(2 / (fan_in + fan_out))``; xavier_uniform: ``sqrt(3)`` times that;
    * orthogonal: ``gain``; lsuv: 1 (then scaled by data); normal:STD: ``STD``.

    ``gain = calculate_gain(gain_name, param)`` (a ``leaky_relu``'s slope is ``param``).
    """
    if kind in ("normal",):
        assert std is not None  # normal:STD is parsed with its STD
        return float(std)
    if kind == "lsuv":
        return 1.0
    gain = nn.init.calculate_gain(gain_name, param)  # type: ignore[arg-type]  # a nonlinearity's name, checked by torch
    if kind == "orthogonal":
        return gain
    fan_in, fan_out = fans(weight)
    if kind.startswith("kaiming"):
        scale = gain / math.sqrt(fan_in)
    elif kind.startswith("xavier"):
        scale = math.sqrt(2.0 / float(fan_in + fan_out))
    else:
        raise ValueError(f"unknown init scheme {kind!r}; valid schemes: {VALID}")
    return scale * math.sqrt(3.0) if kind.endswith("uniform") else scale


def _weight(layer: nn.Module) -> torch.Tensor:
    """A weight layer's weight (:func:`is_weight_layer` checked that it is a tensor)."""
    return cast(torch.Tensor, layer.weight)


class DrawCache:
    """Unit draws kept across the schemes of one audit, so each is drawn once.

    Every scheme starts from the same seed and draws its layers in the same order, so
    ``xavier_normal``'s standard-normal draws are ``kaiming_normal``'s (and ``normal:STD``'s),
    and ``orthogonal`` (like ``nn.init.orthogonal_``) orthogonalizes exactly those draws,
    which ``lsuv`` starts from too: a cached draw times the scheme's scale is what a fresh
    draw after reseeding gives. The uniform schemes map the same draws through
    ``erf(Z / sqrt 2)``, which is exactly U(-1, 1) (the probability integral transform), so
    one draw of N(0, 1) numbers per weight serves every scheme. The cache is all or nothing:
    it is used only when three copies of the weight layers' weights fit in ``max_bytes``
    (default 512 MiB), so results never depend on which schemes ran before.
    ``DrawCache(None)`` never caches.
    """

    def __init__(self, model: Optional[nn.Module], max_bytes: int = 512 * 2**20):
        total = sum(_weight(m).numel() * _weight(m).element_size()
                    for m in model.modules() if is_weight_layer(m)) if model is not None \
            else math.inf
        self.enabled = 3 * total <= max_bytes
        self._store: dict[tuple[str, str], Any] = {}

    def _get(self, family: str, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The unit draw of ``family`` for layer ``name``: N(0, 1), U(-1, 1), or the
        orthogonal matrix (gain 1) of the N(0, 1) draw."""
        cached = self._store.get((family, name))
        if cached is not None and cached.shape == weight.shape:
            return cached
        if family == "normal":
            draw = torch.empty_like(weight).normal_(0.0, 1.0)
        elif family == "uniform":
            # erf(Z / sqrt 2) = 2 Phi(Z) - 1 is exactly U(-1, 1) for Z ~ N(0, 1): the uniform
            # schemes reuse the normal draws (common random numbers) instead of drawing again.
            gaussian = self._get("normal", name, weight)
            draw = torch.erf(gaussian * (1.0 / math.sqrt(2.0)))
        else:
            gaussian = self._get("normal", name, weight)
            draw = q_factor(gaussian.reshape(weight.size(0), -1)).reshape(weight.shape)
        if self.enabled:
            self._store[(family, name)] = draw
        return draw

    def fill_(self, family: str, name: str, weight: torch.Tensor, scale: float) -> None:
        """Write ``scale`` times the family's unit draw into ``weight``, in place."""
        draw = self._get(family, name, weight)
        torch.mul(draw.to(weight.dtype), scale, out=weight)


def init_weight(weight: torch.Tensor, kind: str, gain_name: str = "linear",
                param: Optional[float] = None, std: Optional[float] = None,
                cache: Optional[DrawCache] = None, name: str = "") -> None:
    """Fill one weight tensor in place by ``kind`` (``lsuv``: its orthogonal start)."""
    if kind not in FAMILY:
        raise ValueError(f"unknown init scheme {kind!r}; valid schemes: {VALID}")
    if weight.numel() == 0:
        return
    with torch.no_grad():
        (cache or DrawCache(None)).fill_(FAMILY[kind], name, weight,
                                         weight_scale(kind, weight, gain_name, param, std))


def orthogonal_(tensor: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """``nn.init.orthogonal_``'s matrix (same random draws, same Q up to rounding), faster.

    As PyTorch does: flatten to (rows, cols), draw a Gaussian matrix, take the Q factor of its
    tall orientation with R's diagonal positive (:func:`q_factor`), scale by ``gain``.
    """
    if tensor.ndim < 2:
        raise ValueError("only tensors with 2 or more dimensions are supported")
    if tensor.numel() == 0:
        return tensor
    gaussian = tensor.new_empty((tensor.size(0), tensor.numel() // tensor.size(0))).normal_(0, 1)
    with torch.no_grad():
        tensor.view_as(gaussian).copy_(q_factor(gaussian)).mul_(gain)
    return tensor


def q_factor(gaussian: torch.Tensor) -> torch.Tensor:
    """The (semi-)orthogonal matrix ``torch.nn.init.orthogonal_`` makes from a (rows, cols)
    Gaussian matrix ``A``: Q of the tall orientation's QR with R's diagonal positive.

    When ``A`` is at least twice as long as wide or wide as long (every conv of a ResNet or
    VGG), Q comes from Cholesky-QR: with ``L`` the Cholesky factor of the small Gram matrix,
    ``Q = A L^-T`` (tall) or ``Q = L^-1 A`` (wide), matrix products in ``A``'s own layout
    instead of Householder QR (resnet18's weights on one CPU thread: about 0.2 s instead of
    0.9 s). A Gaussian matrix that shape has condition number at most about 6, so
    orthogonality holds to about 1e-6 in float32. Squarer matrices, and any Gram matrix
    that is not positive definite, use ``torch.linalg.qr``.
    """
    rows, cols = gaussian.shape
    a = gaussian if gaussian.dtype in (torch.float32, torch.float64) else gaussian.float()
    wide = rows < cols
    if max(rows, cols) >= 2 * min(rows, cols):
        chol, info = torch.linalg.cholesky_ex(a @ a.T if wide else a.T @ a)
        if int(info) == 0:
            eye = torch.eye(chol.shape[0], dtype=chol.dtype, device=chol.device)
            inv = torch.linalg.solve_triangular(chol, eye, upper=False)
            return inv @ a if wide else a @ inv.T
    q, r = torch.linalg.qr(a.T if wide else a)
    q = q * torch.sign(torch.diag(r, 0))
    return q.T if wide else q


def apply_scheme(model: nn.Module, scheme: str, trace: ForwardTrace,
                 forward: Optional[Callable[[], Any]] = None,
                 cache: Optional[DrawCache] = None) -> dict[str, Any]:
    """Re-initialize ``model`` in place by ``scheme``; ``default`` changes nothing.

    ``trace`` gives each layer's following nonlinearity; ``forward`` (a callable running the
    model on one batch) is needed by ``lsuv`` only; ``cache`` shares unit draws between
    schemes (see :class:`DrawCache`). Returns details: for ``lsuv`` the number of
    rescalings per layer.
    """
    kind, std = parse_scheme(scheme)
    if kind == "default":
        return {}
    for name, module in model.named_modules():
        if is_weight_layer(module):
            nl = trace.nonlinearity.get(name, LINEAR)
            with torch.no_grad():
                init_weight(module.weight, kind, nl.gain_name, nl.param, std, cache, name)
                if isinstance(getattr(module, "bias", None), torch.Tensor):
                    module.bias.zero_()
        elif isinstance(module, NORM_TYPES):
            reset_norm(module)
    if kind == "lsuv":
        if forward is None:
            raise ValueError("the lsuv scheme needs a data batch (forward callable)")
        return {"lsuv_iterations": lsuv_scale(model, forward)}
    return {}


def _variance(x: torch.Tensor) -> float:
    """Population variance as E[x^2] - E[x]^2 (two fast reductions; ``torch.var`` is several
    times slower on a CPU), falling back to ``torch.var`` when the mean dominates."""
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    mean, square = (float(v) for v in torch.stack([x.mean(), x.square().mean()]).tolist())
    var = square - mean * mean
    if not math.isfinite(var) or var <= 1e-4 * mean * mean:
        return float(x.var(correction=0))
    return var


def lsuv_scale(model: nn.Module, forward: Callable[[], Any], tol: float = LSUV_TOL,
               max_iter: int = LSUV_MAX_ITER) -> dict[str, Any]:
    """LSUV's data-driven part: scale each weight layer to unit output variance, in run order.

    One forward pass under ``no_grad`` does it all. A forward hook on each weight layer
    measures its output variance on the batch, divides the weight by its square root and
    returns the output divided likewise; it repeats while the variance is off by ``tol`` or
    more, at most ``max_iter`` times (the paper's loop). With the bias zeroed, the layer's
    output is linear in its weight, so the rescaled output *is* the output the rescaled
    layer gives on the same input: the layers after it are then measured on exactly the
    input a fresh forward pass would give them, and the paper's one partial forward per
    try (stopped after the layer being tuned) is not needed. A layer is tuned on its first
    call only. A layer whose output variance is zero or not finite cannot be scaled to 1 and
    is left as it is. BatchNorm running statistics, which the pass touched, are reset.
    The weight layers' biases must be zero (:func:`apply_scheme` zeroes them first).

    Returns name -> number of rescalings (layers that did not run: 0).
    """
    modules = dict(model.named_modules())
    layers = [n for n, m in modules.items() if is_weight_layer(m)]
    iterations = {n: 0 for n in layers}
    done: set[Any] = set()

    def hook_for(name):
        def hook(module, args, output):
            if name in done or not isinstance(output, torch.Tensor) or output.numel() < 2:
                return None
            done.add(name)
            out = output
            while iterations[name] < max_iter:
                var = _variance(out.detach())
                if not math.isfinite(var) or var <= 0 or abs(var - 1.0) < tol:
                    break
                scale = 1.0 / math.sqrt(var)
                module.weight.mul_(scale)
                out = out * scale
                iterations[name] += 1
            return out
        return hook

    handles = []
    try:
        for name in layers:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    for module in model.modules():
        if isinstance(module, NORM_TYPES) and getattr(module, "track_running_stats", False):
            module.reset_running_stats()  # type: ignore[operator]  # a norm layer's method (stubs: Tensor | Module)
    return iterations


# --------------------------------------------------------------------------- the printed code

_WEIGHT_CLASSES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                   "ConvTranspose3d", "Linear")
_NORM_CLASSES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "GroupNorm",
                 "LayerNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm")


def _public_classes(model: nn.Module, names: tuple[Any, ...]) -> str:
    """``(nn.Conv2d, nn.Linear)``: the public classes of ``names`` the model's modules are."""
    found = []
    for module in model.modules():
        for cls_name in names:
            cls = getattr(nn, cls_name, None)
            if cls is not None and isinstance(module, cls) and cls_name not in found:
                found.append(cls_name)
                break
    found.sort(key=names.index)
    return "(" + ", ".join(f"nn.{c}" for c in found) + ("," if len(found) == 1 else "") + ")"


def _nonlinearity_table(trace: ForwardTrace) -> tuple[list[Any], str, str]:
    """Lines defining NONLINEARITY (and LEAKY_SLOPE if needed) and the default names."""
    gains = {n: trace.nonlinearity.get(n, LINEAR) for n in trace.weight_layers}
    common = Counter(nl.gain_name for nl in gains.values()).most_common(1)
    default = common[0][0] if common else "relu"
    others = {n: nl.gain_name for n, nl in gains.items() if nl.gain_name != default}
    lines = ["# The activation that actually follows each weight layer (traced in a forward pass);",
             f"# layers not listed are followed by {default!r}."]
    lines.append("NONLINEARITY = {" + "".join(f"\n    {n!r}: {g!r}," for n, g in others.items())
                 + ("\n}" if others else "}"))
    slopes = {n: nl.param for n, nl in gains.items()
              if nl.gain_name == "leaky_relu" and nl.param is not None}
    if slopes:
        lines.append("LEAKY_SLOPE = {" + "".join(f"\n    {n!r}: {s!r}," for n, s in slopes.items())
                     + "\n}")
    return lines, default, "LEAKY_SLOPE" if slopes else "None"


def _init_call(kind: str, std: Any, trace: ForwardTrace) -> tuple[Any, ...]:
    """``(table lines, the init call for one module m)`` of a scheme."""
    lines: list[str] = []
    default, slope = "linear", "None"
    if kind in ("kaiming_normal", "kaiming_uniform", "orthogonal"):
        lines, default, slope = _nonlinearity_table(trace)
        lines.append("")
    nl = f"NONLINEARITY.get(name, {default!r})"
    a = "a=LEAKY_SLOPE.get(name, 0), " if slope != "None" else ""
    gain = f"nn.init.calculate_gain({nl}, LEAKY_SLOPE.get(name))" if slope != "None" else \
        f"nn.init.calculate_gain({nl})"
    kaiming = f'(m.weight, {a}mode="fan_in", nonlinearity={nl})'
    call = {
        "kaiming_normal": "nn.init.kaiming_normal_" + kaiming,
        "kaiming_uniform": "nn.init.kaiming_uniform_" + kaiming,
        "orthogonal": f"nn.init.orthogonal_(m.weight, gain={gain})",
        "xavier_normal": "nn.init.xavier_normal_(m.weight)",
        "xavier_uniform": "nn.init.xavier_uniform_(m.weight)",
        "normal": f"nn.init.normal_(m.weight, 0.0, {std!r})",
        "lsuv": "nn.init.orthogonal_(m.weight)",
    }[kind]
    return lines, call


def _lsuv_function(loop: list[Any], weights: str) -> list[Any]:
    """A self-contained ``lsuv_init(model, inputs)`` and the line that calls it."""
    return [
        "def lsuv_init(model, inputs, tol=0.1, max_iter=10):",
        '    """LSUV (Mishkin & Matas 2016): orthogonal weights, then scale each layer, in the',
        "    order the layers run, until its output variance on `inputs` is 1 (within tol, at",
        '    most max_iter rescalings per layer)."""',
        *loop,
        "    done = set()",
        "",
        "    def rescale(layer, args, out):",
        "        # Output linear in the weight (bias zero): rescaling the output is rerunning it.",
        "        if layer in done:",
        "            return out",
        "        done.add(layer)",
        "        for _ in range(max_iter):",
        "            var = out.detach().float().var().item()",
        "            if not math.isfinite(var) or var <= 0 or abs(var - 1) < tol:",
        "                break",
        "            layer.weight.mul_(1 / math.sqrt(var))",
        "            out = out / math.sqrt(var)",
        "        return out",
        "",
        f"    layers = [m for m in model.modules() if isinstance(m, {weights})]",
        "    hooks = [m.register_forward_hook(rescale) for m in layers]",
        "    training = model.training",
        "    model.train()  # as in training: normalization layers use the batch statistics",
        "    try:",
        "        with torch.no_grad():",
        "            model(inputs)  # each layer is tuned, in the order they run, on its output",
        "    finally:",
        "        model.train(training)",
        "        for h in hooks:",
        "            h.remove()",
        "    for m in model.modules():",
        "        if getattr(m, \"track_running_stats\", False):",
        "            m.reset_running_stats()",
        "",
        "",
        "lsuv_init(model, inputs)  # inputs: one batch of your training inputs",
    ]


def scheme_code(scheme: str, model: nn.Module, trace: ForwardTrace) -> str:
    """The lines of PyTorch that apply ``scheme`` to a variable ``model`` (and, for lsuv,
    a small self-contained function to call with one batch of inputs)."""
    kind, std = parse_scheme(scheme)
    if kind == "default":
        return ("# The model's own initialization is the healthiest measured: keep it; "
                "there is nothing to add.\n")
    weights = _public_classes(model, _WEIGHT_CLASSES)
    norms = _public_classes(model, _NORM_CLASSES)
    lines, call = _init_call(kind, std, trace)
    loop = _init_loop(call, weights, norms, indent="    " if kind == "lsuv" else "")
    if kind != "lsuv":
        return "\n".join(["import torch", "from torch import nn", ""] + lines + loop) + "\n"
    head = ["import math", "import torch", "from torch import nn", ""]
    return "\n".join(head + _lsuv_function(loop, weights)) + "\n"


def _init_loop(call: str, weights: str, norms: str, indent: str = "") -> list[Any]:
    lines = [
        "with torch.no_grad():",
        "    for name, m in model.named_modules():",
    ]
    if weights != "()":
        lines += [
            f"        if isinstance(m, {weights}):",
            f"            {call}",
            "            if m.bias is not None:",
            "                nn.init.zeros_(m.bias)",
        ]
    if norms != "()":
        lines += [
            f"        {'elif' if weights != '()' else 'if'} isinstance(m, {norms}):",
            "            if getattr(m, \"weight\", None) is not None:",
            "                nn.init.ones_(m.weight)",
            "            if getattr(m, \"bias\", None) is not None:",
            "                nn.init.zeros_(m.bias)",
            "            if getattr(m, \"track_running_stats\", False):",
            "                m.reset_running_stats()",
        ]
    if weights == "()" and norms == "()":
        lines.append("        pass  # the model has no layer these schemes set")
    return [indent + line for line in lines]
