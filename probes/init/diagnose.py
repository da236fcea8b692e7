"""Turning measured layers into findings and a score per scheme (the recommendation:
:mod:`audit.probes.init.ranking`).

Signals are judged by their *trend across depth*, fitted robustly (Theil-Sen, ``scipy.stats.
theilslopes``) to log-value versus weight-layer depth: the fit gives a per-layer factor and a
fitted end-to-end ratio. A finding needs both a large end-to-end change and a clear per-layer
factor, so a very deep healthy network's slight drift (a ResNet's 0.93 per layer) is not
flagged while a 30-layer plain ReLU net under Xavier (0.69 per layer) is. Three signals:

* forward: the std of each weight layer's output (``act_std``, per element);
* backward: the norm of the gradient with respect to each weight layer's output
  (``output_grad_norm``: the whole layer's, so layers of different widths compare);
* updates: each layer's weight-gradient norm relative to its weight norm
  (``grad_weight_ratio``), fitted across depth and, network-wide, by its size.

Weight-gradient norms alone mislead: under Xavier a deep plain ReLU net's forward signal
halves its variance at every layer while the backward signal grows by the same factor, so
their product, the weight gradient, is flat across depth and the published first/last
weight-gradient ratio rules (AutoTrainer, torchmortem) stay silent. The forward std trend
and the output-gradient trend both see it.

Dead units are counted per unit (channel or feature) that is zero for every sample and
position of the batch, not per element: even a deep healthy ReLU net at init has units that
happen to be negative on the whole batch (inputs after a ReLU share a positive mean, so a
unit's pre-activations move together across samples); as depth grows, the samples' pattern
correlation goes to 1 and the dead fraction goes to one half. A layer is flagged only when
significantly more than that half is dead (a binomial test against ``dead_reference``), which
keeps small layers (a squeeze-and-excitation block's eight units) from false alarms, while the
element-wise ">= 70 % of outputs non-positive" rule both fires on healthy layers (VGG's first
classifier layer: 46 % dead units, about 73 % zero outputs) and misses layers whose dead units
hide behind very active ones.

Measured on this code (first training step; torchvision models at batch 4, 64x64 (VGG
32x32); MLPs width 128, batch 64). "act": the fitted per-layer factor and end-to-end ratio
(last/first) of the output std; "og" and "g/w": the same for the output-gradient norm and the
weight-gradient/weight ratio (>1: larger at the output end); then the largest and median
g/w, the largest dead and saturated fractions and the largest output std::

    model / scheme         act         og           g/w         g/w max med    dead sat  std
    example CNN default    0.99 0.96   0.74 0.31    1.34 3.2    1.1     0.30   0.11 -    0.71
    example CNN kaiming    1.03 1.1    0.77 0.34    1.77 9.8    3.0     0.26   0.08 -    1.9
    resnet18 default       0.96 0.47   0.94 0.28    0.91 0.17   17      0.39   0.00 -    2.4
    vgg11 default          0.90 0.35   1.21 6.5     1.03 1.3    2.6     0.06   0.45 -    0.38
    vgg11 xavier_normal    0.74 0.052  1.52 64      1.03 1.3    0.21    0.044  0.46 -    0.31
    alexnet default        0.57 0.020  2.23 270     1.16 2.8    0.21    0.015  0.20 -    0.56
    relu MLP 30 kaiming    0.98 0.53   1.01 1.5     1.01 1.4    0.75    0.073  0.41 -    2.1
    relu MLP 30 xavier     0.69 2.4e-5 1.43 3.2e4   0.99 0.86   1.3e-5  5.7e-6 0.41 -    1.0
    relu MLP 30 default    1.00 0.92   2.45 2e11    2.43 1.5e11 0.035   1.9e-8 0.57 -    0.59
    sigmoid MLP 10 default 1.00 0.97   7.02 4.1e7   6.95 3.8e7  0.47    3.2e-5 -    0.00 0.59
    tanh MLP 10 default    0.81 0.15   1.74 150     1.43 26     0.06    0.0021 -    0.00 0.59
    tanh MLP 10 N(0,1)     1.00 0.98   0.41 3.3e-4  0.42 3.9e-4 50      0.89   -    0.81 11
    relu MLP, biases -3    -           - (all zero) -           0       0      1.00 -    0.59
    relu MLP 8, W x100     39.9 1.6e11 0.02 5e-12   1.19 3.4    3.5e9   8.5e8  0.12 -    7.6e12
    example CNN, W x100    1.12 1.6    0.74 0.30    1.34 3.2    3.1     0.84   0.21 -    3.7e3

Also healthy under their torchvision init (default scheme, no finding): mobilenet_v2/v3,
efficientnet_b0/v2_s, densenet121, squeezenet, shufflenet, convnext_tiny, regnet_y_400mf
(squeeze-and-excitation layers of 8 units with 5 dead), mnasnet, resnet50, wide_resnet50,
resnext50, vgg16/19, vgg11_bn, googlenet, maxvit_t, vit_b_16 (zero-initialized head),
swin_t: per-layer factors 0.93-1.02, gradient ratios up to 140x toward the input at 0.94 per
layer. A tanh MLP with N(0, (g / sqrt(n))^2) weights saturates 0.01 (g=1), 0.08 (g=2),
0.29 (g=3), 0.56 (g=5), 0.81 (g=11.3, i.e. N(0, 1)) of its outputs.

So healthy nets change their signals by at most 50x (act), 270x (og) and 26x (g/w) end to
end, the sick ones by 4e4x and more; the thresholds (1000x, 3000x, 300x, each with a
per-layer factor beyond 1.15) leave a margin of about 10x or more on both sides. The absolute
rules have wider margins: largest g/w 0.035 or more when healthy vs 1.3e-5 (limit 1e-4);
median g/w at most 0.84 vs 8.5e8 (limit 1e3); output std at most 2.4 vs 3.7e3 (limit 1e3);
dead units at most 46 % (57 % in the sick default-init MLP) vs 100 % (limit 60 %, and a
binomial test against 50 %); saturation at most 1 % vs 81 % (limit 20 %).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
from scipy import stats

from audit.probes.init.thresholds import resolve_thresholds
from audit.probes.results import DepthTrend, Finding, SchemeResult

#: How much each kind of finding weighs in :func:`scheme_score`.
SEVERITY = {"nonfinite": 8.0, "exploding_gradients": 4.0, "exploding_activations": 4.0,
            "vanishing_gradients": 4.0, "vanishing_activations": 4.0, "dead_units": 2.0,
            "saturation": 2.0}


@dataclass
class Trend:
    """A log-linear fit of a per-layer signal against depth."""

    per_layer: float  # fitted factor from one weight layer to the next
    end_to_end: float  # fitted ratio last layer / first layer
    layers: int  # points fitted
    first: str  # the shallowest layer fitted
    last: str  # the deepest layer fitted


def depth_trend(layers: list[Any], attr: str, min_layers: int = 3) -> Optional[Trend]:
    """Theil-Sen fit of ``log(attr)`` against depth over the weight layers with a positive,
    finite value; ``None`` with fewer than ``min_layers`` such layers or a single depth."""
    points = [(layer.depth, math.log(value), layer.name) for layer in layers
              if layer.weight_layer and (value := getattr(layer, attr)) is not None
              and math.isfinite(value) and value > 0]
    if len(points) < max(int(min_layers), 2) or len({p[0] for p in points}) < 2:
        return None
    depth = np.array([p[0] for p in points], dtype=float)
    logs = np.array([p[1] for p in points], dtype=float)
    slope = float(stats.theilslopes(logs, depth)[0])
    span = float(depth.max() - depth.min())
    return Trend(per_layer=math.exp(slope), end_to_end=_exp(slope * span), layers=len(points),
                 first=points[0][2], last=points[-1][2])


def _exp(x: float) -> float:
    return math.exp(min(max(x, -700.0), 700.0))


def _dominant_nonlinearity(layers: list[Any]) -> str:
    ops = [layer.nonlinearity for layer in layers if layer.weight_layer
           and layer.nonlinearity != "linear"]
    return max(set(ops), key=ops.count) if ops else "linear"


def _advice_scale_up(nl: str) -> str:
    if nl in ("sigmoid", "hardsigmoid"):
        return ("sigmoid's slope is at most 1/4, so every sigmoid layer shrinks the gradient: "
                "use ReLU or tanh in hidden layers, or add normalization layers")
    return ("initialize with the gain of the nonlinearity that follows each layer "
            "(kaiming_normal for ReLU-family, or lsuv), or add normalization/residual "
            "connections")


def diagnose(layers: list[Any], loss: Iterable[Any] = (), thresholds: Optional[dict[str, Any]] = None,
             error: Optional[str] = None) -> list[Any]:
    """Findings for one scheme's measured ``layers`` and loss curve; at most one per kind.

    ``error`` (the scheme raised) adds no finding of its own: the scheme is unhealthy
    anyway and the error says why.
    """
    t = resolve_thresholds(thresholds)
    weights = [layer for layer in layers if layer.weight_layer]
    nl = _dominant_nonlinearity(layers)
    found: list[Any] = []

    def add(kind: str, layer: Optional[str], value: Any, threshold: Any, message: str) -> None:
        if all(f.kind != kind for f in found):
            found.append(Finding(kind, layer, value, threshold, message))

    _nonfinite(layers, list(loss), add)
    mn, fac, fold = t["trend_min_layers"], t["per_layer_factor"], t["activation_trend"]

    act = depth_trend(layers, "act_std", mn)
    if act and act.end_to_end <= 1 / fold and act.per_layer <= 1 / fac:
        add("vanishing_activations", act.last, act.end_to_end, 1 / fold,
            f"The forward signal shrinks {1 / act.per_layer:.2f}x per layer: the output std of "
            f"{act.last} is {act.end_to_end:.1e} of {act.first}'s (fitted over {act.layers} "
            f"layers), so the deep layers see almost no input. The weights are too small for "
            f"the {nl} that follows them: {_advice_scale_up(nl)}.")
    big = max(weights, key=lambda l: _finite(l.act_std), default=None)
    if act and act.end_to_end >= fold and act.per_layer >= fac:
        add("exploding_activations", act.last, act.end_to_end, fold,
            f"The forward signal grows {act.per_layer:.2f}x per layer: the output std of "
            f"{act.last} is {act.end_to_end:.1e} times {act.first}'s (fitted over {act.layers} "
            "layers). The weights are too large: use kaiming_normal with the gain of the "
            "following nonlinearity, or lsuv, or add normalization layers.")
    if big is not None and _finite(big.act_std) > t["activation_std_max"]:
        add("exploding_activations", big.name, big.act_std, t["activation_std_max"],
            f"{big.name} outputs values with std {big.act_std:.3g} (> "
            f"{t['activation_std_max']:g}): its weights or its inputs are far too large. "
            "Normalize the inputs, and use an init that keeps the output std near 1 "
            "(kaiming_normal, lsuv).")

    _gradients(layers, weights, t, nl, add)
    _dead(weights, t, add)
    _saturation(weights, t, add)
    return found


def _finite(value: Any) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def _bad(value: Any) -> bool:
    return value is not None and not math.isfinite(value)


def _nonfinite(layers: list[Any], loss: list[Any], add: Any) -> None:
    """Where NaN/inf starts: the first layer whose weights or output are non-finite, else
    (gradients flow backwards) the deepest layer whose gradients are."""
    bad = [layer for layer in layers if layer.nonfinite]
    if bad:
        forward = [l for l in bad if _bad(l.weight_norm) or _bad(l.act_mean) or _bad(l.act_std)]
        origin = forward[0] if forward else bad[-1]
        where = "its weights or output" if forward else "its gradients"
        others = f"; {len(bad) - 1} other layers too" if len(bad) > 1 else ""
        add("nonfinite", origin.name, float(len(bad)), 0.0,
            f"NaN or inf starts at {origin.name} ({where}) in the first step{others}. "
            "Check the inputs, the loss and the init for NaN/inf or overflow; "
            "torch.autograd.set_detect_anomaly(True) names the op.")
        return
    step = next((i for i, v in enumerate(loss) if v is None or not math.isfinite(v)), None)
    if step is not None:
        add("nonfinite", None, float(step), None,
            f"The loss became NaN or inf at step {step}: training diverged from this init. "
            "Use a smaller init scale (kaiming_normal, lsuv) or a lower learning rate; "
            "clip gradients (torch.nn.utils.clip_grad_norm_).")


def _gradients(layers: list[Any], weights: list[Any], t: dict[str, Any], nl: str, add: Any) -> None:
    mn, fac = t["trend_min_layers"], t["per_layer_factor"]
    # A weight layer that is all zeros (a zero-initialized head, as in torchvision's ViT)
    # passes no gradient back in the first step, by design: judge only the layers after it.
    zeros = [i for i, l in enumerate(weights) if l.weight_norm == 0.0]
    if zeros and len(zeros) < len(weights):
        weights = weights[zeros[-1] + 1:]
        layers = weights
    for attr, fold, what in (
            ("grad_weight_ratio", t["grad_weight_trend"], "weight-gradient/weight norm ratio"),
            ("output_grad_norm", t["output_grad_trend"], "gradient w.r.t. the layer outputs")):
        trend = depth_trend(layers, attr, mn)
        if trend is None:
            continue
        # Gradients flow backwards: compare the input end to the output end.
        ratio = 1.0 / trend.end_to_end if trend.end_to_end > 0 else math.inf
        if ratio <= 1 / fold and trend.per_layer >= fac:
            add("vanishing_gradients", trend.first, ratio, 1 / fold,
                f"The {what} shrinks {trend.per_layer:.2f}x per layer going back: at "
                f"{trend.first} it is {ratio:.1e} of its size at {trend.last} (fitted over "
                f"{trend.layers} layers), so the first layers will barely learn. "
                f"{_advice_scale_up(nl).capitalize()}.")
        if ratio >= fold and trend.per_layer <= 1 / fac:
            add("exploding_gradients", trend.first, ratio, fold,
                f"The {what} grows {1 / trend.per_layer:.2f}x per layer going back: at "
                f"{trend.first} it is {ratio:.1e} times its size at {trend.last} (fitted over "
                f"{trend.layers} layers), so the first layers' updates will blow up. The "
                "weights are too large: use kaiming_normal/xavier with the right gain or "
                "lsuv, add normalization, or clip gradients.")
    ratios = [l.grad_weight_ratio for l in weights
              if l.grad_weight_ratio is not None and math.isfinite(l.grad_weight_ratio)]
    if ratios and max(ratios) < t["grad_weight_min"]:
        top = max(weights, key=lambda l: _finite(l.grad_weight_ratio))
        add("vanishing_gradients", top.name, max(ratios), t["grad_weight_min"],
            f"Even the largest weight-gradient/weight norm ratio ({top.name}: "
            f"{max(ratios):.1e}) is below {t['grad_weight_min']:g}: no layer's weights will "
            f"move. The signal dies on its way through the network: {_advice_scale_up(nl)}.")
    if ratios and float(np.median(ratios)) > t["grad_weight_max"]:
        med = float(np.median(ratios))
        add("exploding_gradients", None, med, t["grad_weight_max"],
            f"The median weight-gradient/weight norm ratio is {med:.1e} (> "
            f"{t['grad_weight_max']:g}): one step would replace the weights many times over. "
            "The init is far too large: use kaiming_normal or lsuv, and clip gradients.")
    graded = [l for l in weights if l.grad_norm is not None]
    zero = [l for l in graded if l.grad_norm == 0.0]
    if graded and zero and len(zero) >= t["zero_grad_layers"] * len(graded):
        add("vanishing_gradients", zero[0].name, float(len(zero)), t["zero_grad_layers"],
            f"{len(zero)} of {len(graded)} weight layers (first: {zero[0].name}) get exactly "
            "zero gradient: nothing flows back to them (dead ReLUs or a zero-scaled layer "
            "downstream). Zero the biases and use kaiming_normal.")


def _dead(weights: list[Any], t: dict[str, Any], add: Any) -> None:
    flagged = []
    for layer in weights:
        frac, units = layer.dead_fraction, layer.units
        if frac is None or not units or frac < t["dead_fraction"]:
            continue
        dead = int(round(frac * units))
        p = float(stats.binom.sf(dead - 1, units, t["dead_reference"]))
        if p <= t["dead_alpha"]:
            flagged.append(layer)
    if flagged:
        worst = max(flagged, key=lambda l: l.dead_fraction)
        add("dead_units", worst.name, worst.dead_fraction, t["dead_fraction"],
            f"{worst.dead_fraction:.0%} of the {worst.units} units after {worst.name} are dead "
            "(ReLU output zero for every sample and position of the batch; a healthy deep ReLU "
            f"net stays under about {t['dead_reference']:.0%})"
            + (f", and {len(flagged) - 1} more layers" if len(flagged) > 1 else "")
            + ". Dead units get no gradient and do not recover. Look for large negative "
            "biases or badly scaled inputs; zero the biases and use kaiming_normal (the "
            "standard schemes do both), or use LeakyReLU.")


def _saturation(weights: list[Any], t: dict[str, Any], add: Any) -> None:
    flagged = [l for l in weights if l.saturated_fraction is not None
               and l.saturated_fraction >= t["saturated_fraction"]]
    if flagged:
        worst = max(flagged, key=lambda l: l.saturated_fraction)
        add("saturation", worst.name, worst.saturated_fraction, t["saturated_fraction"],
            f"{worst.saturated_fraction:.0%} of the {worst.nonlinearity} outputs after "
            f"{worst.name} sit within {t['saturation_margin']:g} of their bounds"
            + (f", and {len(flagged) - 1} more layers saturate" if len(flagged) > 1 else "")
            + f": there the {worst.nonlinearity}'s slope is near zero and little gradient "
            "passes. The weights are too large for it: use xavier_normal (Glorot) or lsuv, or "
            "normalize the layer inputs.")


# --------------------------------------------------------------------------- ranking


def depth_trends(layers: list[Any], thresholds: Optional[dict[str, Any]] = None) -> DepthTrend:
    """The fitted end-to-end trends the table shows and :mod:`probes.init.ranking` prefers
    by: the output std's and the output-gradient norm's, last weight layer over first."""
    t = resolve_thresholds(thresholds)
    act = depth_trend(layers, "act_std", t["trend_min_layers"])
    grad = depth_trend(layers, "output_grad_norm", t["trend_min_layers"])
    return DepthTrend(activations=act.end_to_end if act else None,
                      gradients=grad.end_to_end if grad else None)


def scheme_score(scheme: SchemeResult) -> float:
    """Lower is better. Diagnosis first: the sum of :data:`SEVERITY` over the scheme's
    findings (each kind counts once; at most one finding per kind); then the last loss after
    the steps, squashed monotonically into [0, 1) so it only orders schemes with the same
    findings. A scheme that raised scores ``inf``; a non-finite last loss counts as 1."""
    if scheme.error is not None:
        return math.inf
    severity = sum(SEVERITY.get(f.kind, 1.0) for f in scheme.findings)
    last = scheme.loss[-1] if scheme.loss else None
    if last is None or not math.isfinite(last):
        return severity + 1.0
    return severity + 0.5 * (last / (1.0 + abs(last)) + 1.0) * (1 - 1e-12)
