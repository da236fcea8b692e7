"""Diagnosis against ground truth from theory, threshold handling, and the statistics."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from audit.probes.init.diagnose import depth_trend, diagnose, scheme_score
from audit.probes.init.ranking import recommend
from audit.probes.init.thresholds import DEFAULT_THRESHOLDS, resolve_thresholds
from audit.probes.init.flow import dead_fraction, saturated_fraction
from audit.probes.init.engine import run_init
from audit.probes.results import Finding, LayerStats, SchemeResult
from audit.probes.run.training import TrainingSetup, synthetic_batches

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def mlp(depth: int, width: int = 128, act=nn.ReLU, bias: float | None = None,
        inputs: int = 64) -> nn.Sequential:
    layers, d = [], inputs
    for _ in range(depth - 1):
        linear = nn.Linear(d, width)
        if bias is not None:
            nn.init.constant_(linear.bias, bias)
        layers += [linear, act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


def setup(model: nn.Module, inputs: int = 64, batch: int = 64) -> TrainingSetup:
    return TrainingSetup(model=model, data=synthetic_batches((inputs,), 10, batch, 2, seed=0))


def audit(model, schemes=("default",), steps=1, **kw):
    torch.manual_seed(0)
    return run_init(setup(model), schemes=list(schemes), steps=steps, **kw)


def kinds(scheme) -> set:
    return {f.kind for f in scheme.findings}


# --------------------------------------------------------------------------- ground truth


@pytest.fixture(scope="module")
def relu30():
    torch.manual_seed(0)
    return audit(mlp(30), schemes=["xavier_normal", "kaiming_normal"])


def variance_ratio(scheme) -> float:
    """Fitted per-layer ratio of the output variance of consecutive weight layers."""
    return depth_trend(scheme.layers, "act_std").per_layer ** 2


def test_relu30_xavier_halves_the_variance_per_layer_and_is_flagged(relu30):
    xavier = relu30.scheme("xavier_normal")
    assert variance_ratio(xavier) == pytest.approx(0.5, abs=0.08)  # He et al. 2015
    assert "vanishing_activations" in kinds(xavier)
    assert xavier.verdict == "unhealthy"
    # The published first/last weight-gradient rule stays silent: weight-gradient norms are
    # flat across depth while the forward signal collapses.
    weights = [l for l in xavier.layers if l.weight_layer]
    assert 0.2 < weights[0].grad_norm / weights[-2].grad_norm < 5
    assert depth_trend(xavier.layers, "grad_norm").per_layer == pytest.approx(1.0, abs=0.05)
    # ... while the output-gradient norms see it.
    assert depth_trend(xavier.layers, "output_grad_norm").per_layer > 1.3


def test_relu30_kaiming_keeps_the_variance_and_is_healthy(relu30):
    kaiming = relu30.scheme("kaiming_normal")
    assert variance_ratio(kaiming) == pytest.approx(1.0, abs=0.08)
    assert kaiming.findings == [] and kaiming.verdict == "healthy"
    assert relu30.recommended != "xavier_normal"


def test_deep_sigmoid_default_init_has_vanishing_gradients():
    torch.manual_seed(0)
    result = audit(mlp(10, act=nn.Sigmoid))
    assert "vanishing_gradients" in kinds(result.scheme("default"))
    assert result.verdict == "unhealthy"
    message = next(f.message for f in result.scheme("default").findings
                   if f.kind == "vanishing_gradients")
    assert "sigmoid" in message and "1/4" in message


def test_tanh_with_unit_normal_weights_saturates():
    torch.manual_seed(0)
    result = audit(mlp(10, act=nn.Tanh), schemes=["normal:1.0", "xavier_normal"])
    sick = result.scheme("normal:1.0")
    assert "saturation" in kinds(sick)
    worst = next(f for f in sick.findings if f.kind == "saturation")
    assert worst.value > 0.5 and "tanh" in worst.message
    assert "saturation" not in kinds(result.scheme("xavier_normal"))


def test_relu_net_with_negative_biases_has_dead_units():
    torch.manual_seed(0)
    result = audit(mlp(6, bias=-3.0))
    finding = next(f for f in result.scheme("default").findings if f.kind == "dead_units")
    assert finding.value == pytest.approx(1.0)
    assert "bias" in finding.message


def test_weights_scaled_up_100x_explode():
    torch.manual_seed(0)
    model = mlp(8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(100.0)
    found = kinds(audit(model, steps=2).scheme("default"))
    assert {"exploding_activations", "exploding_gradients"} <= found


def test_nan_weight_is_nonfinite():
    torch.manual_seed(0)
    model = mlp(4)
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    result = audit(model, steps=3)
    finding = next(f for f in result.scheme("default").findings if f.kind == "nonfinite")
    assert finding.layer == "2"
    assert math.isnan(result.scheme("default").loss[0])
    assert len(result.scheme("default").loss) == 1  # stopped early


def test_nonfinite_loss_later_is_reported():
    layers = [LayerStats(name=str(i), type="Linear", depth=i, weight_layer=True) for i in range(2)]
    found = diagnose(layers, [2.3, float("inf")])
    assert [(f.kind, f.value) for f in found] == [("nonfinite", 1.0)]


# --------------------------------------------------------------------------- thresholds


def test_threshold_overrides_change_the_verdict(relu30):
    xavier = relu30.scheme("xavier_normal")
    relaxed = diagnose(xavier.layers, xavier.loss,
                       {"activation_trend": 1e9, "output_grad_trend": 1e9,
                        "grad_weight_min": 0.0})
    assert relaxed == []
    strict = diagnose(relu30.scheme("kaiming_normal").layers, [],
                      {"activation_trend": 1.01, "per_layer_factor": 1.0})
    assert "vanishing_activations" in {f.kind for f in strict}


def test_run_init_records_the_thresholds_it_used():
    result = audit(mlp(3), thresholds={"dead_fraction": 0.9})
    assert result.thresholds["dead_fraction"] == 0.9
    assert set(result.thresholds) == set(DEFAULT_THRESHOLDS)


@pytest.mark.parametrize("call", [
    lambda: resolve_thresholds({"dead_frac": 0.5}),
    lambda: diagnose([], [], {"dead_frac": 0.5}),
    lambda: run_init(setup(mlp(2)), thresholds={"dead_frac": 0.5}),
])
def test_unknown_threshold_key_names_the_key(call):
    with pytest.raises(ValueError, match="dead_frac"):
        call()


def test_bad_threshold_value():
    with pytest.raises(ValueError, match="dead_fraction"):
        resolve_thresholds({"dead_fraction": "lots"})


def test_every_threshold_is_documented():
    import inspect

    import audit.probes.init.thresholds as module

    source = inspect.getsource(module)
    for key in DEFAULT_THRESHOLDS:
        line = next(l for l in source.splitlines() if l.strip().startswith(f'"{key}"'))
        before = source[:source.index(line)].splitlines()[-1].strip()
        assert before.startswith("#"), key


# --------------------------------------------------------------------------- dead units


def dead_layer(fraction: float, units: int) -> LayerStats:
    return LayerStats(name="l", type="Linear", depth=0, weight_layer=True, units=units,
                      dead_fraction=fraction)


@pytest.mark.parametrize("fraction,units,flagged", [
    (0.46, 4096, False),  # VGG's first classifier layer at init: normal
    (0.41, 128, False),  # a deep Kaiming ReLU MLP: normal
    (5 / 8, 8, False),  # a squeeze-and-excitation block: small, by chance
    (0.65, 512, True),
    (1.0, 16, True),
])
def test_dead_unit_rule(fraction, units, flagged):
    found = diagnose([dead_layer(fraction, units)], [])
    assert ("dead_units" in {f.kind for f in found}) is flagged


# --------------------------------------------------------------------------- statistics


@SETTINGS
@given(channels=st.integers(1, 24), batch=st.integers(1, 6), side=st.integers(1, 5),
       data=st.data())
def test_dead_fraction_of_a_known_conv_output(channels, batch, side, data):
    dead = data.draw(st.sets(st.integers(0, channels - 1)))
    x = torch.rand(batch, channels, side, side) * 0.5  # may be zero somewhere: still alive
    x[0, :, 0, 0] = 1.0  # every unit fires once ...
    for c in dead:
        x[:, c] = 0.0  # ... except the dead ones, zero everywhere
    assert dead_fraction(x, 1).item() == pytest.approx(len(dead) / channels)


@SETTINGS
@given(features=st.integers(1, 40), batch=st.integers(1, 8), data=st.data())
def test_dead_fraction_of_a_known_linear_output(features, batch, data):
    dead = data.draw(st.sets(st.integers(0, features - 1)))
    x = torch.relu(torch.randn(batch, features))
    x[-1] = 1.0
    x[:, sorted(dead)] = 0.0
    assert dead_fraction(x, -1).item() == pytest.approx(len(dead) / features)


@SETTINGS
@given(n=st.integers(1, 500), margin=st.floats(0.001, 0.2), data=st.data())
def test_saturated_fraction_counts_values_near_the_bounds(n, margin, data):
    inside = data.draw(st.integers(0, n))
    values = torch.zeros(n)
    values[:inside] = 1.0 - margin / 2  # within the margin of tanh's bound
    values[inside:] = 1.0 - 2 * margin
    assert saturated_fraction(values, -1.0, 1.0, margin).item() == pytest.approx(inside / n)
    sig = (values + 1) / 2  # the same points on sigmoid's scale
    assert saturated_fraction(sig, 0.0, 1.0, margin).item() == pytest.approx(inside / n)


@SETTINGS
@given(factor=st.floats(0.2, 5.0), n=st.integers(3, 40), start=st.floats(1e-3, 1e3))
def test_depth_trend_recovers_a_geometric_signal(factor, n, start):
    layers = [LayerStats(name=str(i), type="Linear", depth=i, weight_layer=True,
                         act_std=start * factor**i) for i in range(n)]
    trend = depth_trend(layers, "act_std")
    assert trend.per_layer == pytest.approx(factor, rel=1e-6)
    assert trend.end_to_end == pytest.approx(factor ** (n - 1), rel=1e-4)


def test_depth_trend_is_robust_to_an_outlier_and_skips_zeros():
    stds = [1.0] * 12
    stds[5] = 1e-6  # one deliberately tiny layer (e.g. a zero-init branch)
    stds[7] = 0.0
    layers = [LayerStats(name=str(i), type="Linear", depth=i, weight_layer=True, act_std=s)
              for i, s in enumerate(stds)]
    trend = depth_trend(layers, "act_std")
    assert trend.per_layer == pytest.approx(1.0) and trend.layers == 11


# --------------------------------------------------------------------------- ranking


def scheme(name, findings=(), loss=(2.0,), error=None) -> SchemeResult:
    result = SchemeResult(name=name, verdict="unhealthy" if findings or error else "healthy",
                          findings=[Finding(k, None, None, None, k) for k in findings],
                          loss=list(loss), error=error)
    result.score = scheme_score(result)
    return result


def test_score_puts_diagnosis_before_loss():
    sick_but_low_loss = scheme("a", ["dead_units"], loss=[0.1])
    healthy_high_loss = scheme("b", loss=[50.0])
    worse = scheme("c", ["nonfinite"], loss=[0.1])
    assert healthy_high_loss.score < sick_but_low_loss.score < worse.score
    assert scheme("d", loss=[1.0]).score < scheme("e", loss=[1.5]).score
    assert scheme("f", error="boom").score == math.inf
    assert scheme("g", loss=[2.0, float("nan")]).score > scheme("h", loss=[1e9]).score


def test_recommend():
    default = scheme("default", loss=[2.30])
    slightly_better = scheme("kaiming_normal", loss=[2.29])
    choice = recommend([default, slightly_better])
    # one seed each: a lower loss alone is no reason to change a healthy init
    assert choice.scheme == "default" and choice.kept_own and choice.delta is None
    assert recommend([default, scheme("orthogonal", loss=[1.5])]).scheme == "default"
    sick = scheme("default", ["vanishing_gradients"], loss=[1.0])
    choice = recommend([sick, scheme("lsuv", loss=[2.2])])
    assert choice.scheme == "lsuv" and "vanishing_gradients" in choice.reason
    assert not choice.kept_own and choice.seeds == 1
    assert recommend([scheme("default", error="x")]).scheme is None
