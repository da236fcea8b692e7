"""The init diagnosis's thresholds and their checking, apart from the diagnosis (which needs
scipy): the configuration and script mode's parent read them before any run. Why each value
is what it is: :mod:`audit.probes.init.diagnose`."""
from __future__ import annotations

import math
from typing import Any, Optional

DEFAULT_THRESHOLDS = {
    # Fewest weight layers with usable values for a depth trend to be judged at all.
    "trend_min_layers": 3,
    # Activations vanish/explode when the fitted output std changes by at least this factor
    # from the first weight layer to the last (down: vanishing, up: exploding; healthy nets
    # measured: at most 50x) ...
    "activation_trend": 1000.0,
    # ... gradients, when the fitted weight-gradient/weight norm ratio changes by at least
    # this factor from the output end to the input end (smaller there: vanishing; healthy:
    # at most 26x) ...
    "grad_weight_trend": 300.0,
    # ... or the fitted norm of the gradient w.r.t. the layer outputs does, by at least this
    # factor. Where activations are large the output gradient is small and the weight
    # gradient, their product, is fine: AlexNet's default init measures 270x here and trains.
    "output_grad_trend": 3000.0,
    # For any trend finding the fitted per-layer factor must also be at least this far from
    # 1 (>= it, or <= 1/it): a slow drift over a very deep net is not a vanishing signal.
    "per_layer_factor": 1.15,
    # Vanishing gradients: the LARGEST weight-gradient/weight norm ratio of any weight layer
    # is below this: no layer's weights would move. (Per layer it would false-alarm on layer
    # scale, zero-initialized residual branches and squeeze-and-excitation blocks.)
    "grad_weight_min": 1e-4,
    # Exploding gradients: the MEDIAN weight-gradient/weight norm ratio is above this.
    "grad_weight_max": 1e3,
    # Exploding activations: some weight layer's output std is above this (inputs or
    # weights far too large; healthy nets measured stay below 3, so ten times that is not
    # noise; a small CNN under N(0, 0.5^2) measures 63 at its logits and a first loss of 110
    # where chance is 2.3).
    "activation_std_max": 30.0,
    # Vanishing gradients: at least this fraction of weight layers get exactly no gradient.
    # (All gradient rules skip the layers before an all-zero weight layer: a zero-initialized
    # head, as in torchvision's ViT, blocks the first step's gradient by design.)
    "zero_grad_layers": 0.5,
    # Dead units: a layer is flagged when at least this fraction of its ReLU units are dead
    # (zero for every sample and position) ...
    "dead_fraction": 0.6,
    # ... and significantly more than this reference fraction, the most a deep healthy ReLU
    # net reaches at init (binomial test over the layer's units) ...
    "dead_reference": 0.5,
    # ... at this significance level.
    "dead_alpha": 1e-3,
    # Saturation: a layer is flagged when at least this fraction of its tanh/sigmoid outputs
    # are within the margin of a bound.
    "saturated_fraction": 0.2,
    # The margin, in units of tanh's output (|y| >= 1 - margin; sigmoid: the same
    # pre-activation, y <= margin/2 or y >= 1 - margin/2). Used while measuring.
    "saturation_margin": 0.01,
    # The smallest gain worth a change (relative to the model's own median loss after the
    # steps): a healthy 'default' is replaced only by a scheme whose loss is lower beyond seed
    # noise (a paired interval over init seeds below zero) AND by at least this much on
    # average; probes/init/ranking.py. Among tied healthy schemes, a lower loss by more than
    # this overrides the fixed order of preference.
    "loss_tolerance": 0.02,
}

#: Smallest meaningful value of thresholds that are factors or counts (others: 0).
_LEAST = {"trend_min_layers": 2.0, "activation_trend": 1.0, "grad_weight_trend": 1.0,
          "output_grad_trend": 1.0, "per_layer_factor": 1.0}


def resolve_thresholds(overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """DEFAULT_THRESHOLDS with ``overrides`` applied; unknown keys or non-numbers raise."""
    limits = dict(DEFAULT_THRESHOLDS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_THRESHOLDS:
            raise ValueError(f"unknown init threshold {key!r}; known thresholds: "
                             + ", ".join(sorted(DEFAULT_THRESHOLDS)))
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"init threshold {key!r} must be a number, got {value!r}") from None
        least = _LEAST.get(key, 0.0)
        if not math.isfinite(number) or number < least:
            raise ValueError(f"init threshold {key!r} must be a finite number >= {least:g}, "
                             f"got {value!r}")
        limits[key] = number
    return limits
