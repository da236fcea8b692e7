"""The init schemes: formulas, gains from the traced nonlinearity, in-place, LSUV, printed code."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from audit.probes.init.flow import trace_forward
from audit.probes.results import BUILTIN_SCHEMES
from audit.probes.init.scheme_names import parse_scheme, validate_schemes
from audit.probes.init.schemes import (DrawCache, LSUV_TOL, apply_scheme, fans, orthogonal_,
                                       restore_state, scheme_code, scheme_owned_keys, snapshot_state)

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
RELU_GAIN = math.sqrt(2.0)
TANH_GAIN = 5.0 / 3.0


def traced(model: nn.Module, x: torch.Tensor):
    model.train()
    return trace_forward(model, lambda: model(x))


def sample_tolerance(n: int) -> float:
    """Relative tolerance for a std estimated from n draws: 5 standard errors, at least 2%."""
    return max(5.0 / math.sqrt(2.0 * n), 0.02)


# --------------------------------------------------------------------------- names


def test_scheme_names_parse():
    for name in BUILTIN_SCHEMES:
        assert parse_scheme(name) == (name, None)
    assert parse_scheme("normal:0.02") == ("normal", 0.02)
    assert validate_schemes([" default", "lsuv", "default", "normal:1e-3"]) == \
        ["default", "lsuv", "normal:1e-3"]


@pytest.mark.parametrize("bad", ["kaiming", "he", "normal", "normal:", "normal:-1",
                                 "normal:abc", "normal:nan", "Default"])
def test_bad_scheme_names_say_the_valid_ones(bad):
    with pytest.raises(ValueError) as err:
        parse_scheme(bad)
    message = str(err.value)
    assert "normal:" in message and ("kaiming_normal" in message or "STD" in message)


def test_no_schemes_is_an_error():
    with pytest.raises(ValueError, match="valid schemes"):
        validate_schemes([])


# --------------------------------------------------------------------------- formulas

layer_shapes = st.one_of(
    st.tuples(st.just("linear"), st.integers(32, 160), st.integers(32, 160), st.just(1)),
    st.tuples(st.just("conv"), st.integers(4, 24), st.integers(16, 48), st.sampled_from([1, 3, 5])),
)
activations = st.sampled_from([("relu", nn.ReLU, RELU_GAIN), ("tanh", nn.Tanh, TANH_GAIN),
                               ("linear", nn.Identity, 1.0), ("sigmoid", nn.Sigmoid, 1.0)])


def one_layer(shape, act):
    kind, cin, cout, k = shape
    layer = nn.Linear(cin, cout) if kind == "linear" else nn.Conv2d(cin, cout, k)
    model = nn.Sequential(layer, act())
    x = torch.randn(2, cin) if kind == "linear" else torch.randn(2, cin, k + 2, k + 2)
    return model, layer, x


@SETTINGS
@given(shape=layer_shapes, act=activations,
       scheme=st.sampled_from(["kaiming_normal", "kaiming_uniform", "xavier_normal",
                               "xavier_uniform", "orthogonal", "normal:0.05"]))
def test_weight_std_matches_the_scheme_formula(shape, act, scheme):
    torch.manual_seed(0)
    name, act_cls, gain = act
    model, layer, x = one_layer(shape, act_cls)
    apply_scheme(model, scheme, traced(model, x))
    w = layer.weight.detach().double()
    fan_in, fan_out = fans(w)
    rows, cols = w.shape[0], w.numel() // w.shape[0]
    expected = {
        "kaiming_normal": gain / math.sqrt(fan_in),
        "kaiming_uniform": gain / math.sqrt(fan_in),
        "xavier_normal": math.sqrt(2.0 / (fan_in + fan_out)),
        "xavier_uniform": math.sqrt(2.0 / (fan_in + fan_out)),
        "orthogonal": gain / math.sqrt(max(rows, cols)),
        "normal:0.05": 0.05,
    }[scheme]
    # Root mean square about zero: every scheme draws with mean 0.
    rms = w.pow(2).mean().sqrt().item()
    assert rms == pytest.approx(expected, rel=sample_tolerance(w.numel()))
    if scheme.endswith("uniform"):
        assert w.abs().max().item() <= math.sqrt(3.0) * expected * (1 + 1e-6)
    if scheme == "orthogonal":
        flat = w.reshape(rows, cols)
        gram = flat @ flat.T if rows <= cols else flat.T @ flat
        assert torch.allclose(gram, gain**2 * torch.eye(min(rows, cols), dtype=gram.dtype),
                              atol=1e-4 * gain**2)
    assert torch.count_nonzero(layer.bias).item() == 0


@SETTINGS
@given(rows=st.integers(1, 96), cols=st.integers(1, 96), k=st.sampled_from([1, 3]),
       gain=st.floats(0.5, 2.0))
def test_orthogonal_matches_torch(rows, cols, k, gain):
    a, b = torch.empty(rows, cols, k, k), torch.empty(rows, cols, k, k)
    torch.manual_seed(3)
    nn.init.orthogonal_(a, gain=gain)
    torch.manual_seed(3)
    orthogonal_(b, gain=gain)
    assert torch.allclose(a, b, atol=2e-5 * gain)


def test_norm_layers_get_weight_one_bias_zero_and_fresh_stats():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 6), nn.LayerNorm(6), nn.GroupNorm(2, 6))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-3, 3)
    x = torch.randn(4, 3, 6, 6)
    trace = traced(model, x)  # the probing pass moved the running statistics
    assert model[1].running_mean.abs().sum() > 0
    apply_scheme(model, "kaiming_normal", trace)
    for norm in (model[1], model[5], model[6]):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert torch.equal(model[1].running_mean, torch.zeros(8))
    assert torch.equal(model[1].running_var, torch.ones(8))


def test_default_changes_nothing_and_other_layers_keep_their_values():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Flatten(), nn.Linear(16, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace = traced(model, torch.tensor([[1, 2], [3, 4]]))
    apply_scheme(model, "default", trace)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    apply_scheme(model, "orthogonal", trace)
    assert torch.equal(model[0].weight, before["0.weight"])  # not a weight layer
    assert not torch.equal(model[2].weight, before["2.weight"])


# --------------------------------------------------------------------------- gains


class Functional(nn.Module):
    """Activations called functionally, attribute names that lie, and a definition order
    that is not the execution order."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(64, 64)
        self.relu_layer = nn.Linear(64, 64)  # followed by tanh, whatever its name says
        self.tanh_layer = nn.Linear(64, 64)  # followed by relu
        self.bn = nn.BatchNorm1d(64)
        self.leaky = nn.Linear(64, 64)
        self.sig = nn.Linear(64, 64)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = torch.tanh(self.relu_layer(x))
        x = F.relu(self.tanh_layer(x))
        x = F.leaky_relu(self.bn(self.leaky(x)), 0.2)
        x = self.drop(self.sig(x)).sigmoid()
        return self.out(x)


def test_gains_follow_the_traced_nonlinearity():
    torch.manual_seed(0)
    model = Functional()
    trace = traced(model, torch.randn(16, 64))
    ops = {name: trace.nonlinearity[name].op for name in trace.weight_layers}
    assert ops == {"relu_layer": "tanh", "tanh_layer": "relu", "leaky": "leaky_relu",
                   "sig": "sigmoid", "out": "linear"}
    assert trace.weight_layers == ["relu_layer", "tanh_layer", "leaky", "sig", "out"]
    assert trace.nonlinearity["leaky"].param == pytest.approx(0.2)
    assert trace.nonlinearity["bn"].op == "leaky_relu"  # carried through the norm layer
    apply_scheme(model, "kaiming_normal", trace)
    expected = {"relu_layer": TANH_GAIN, "tanh_layer": RELU_GAIN,
                "leaky": math.sqrt(2.0 / (1 + 0.2**2)), "sig": 1.0, "out": 1.0}
    for name, gain in expected.items():
        std = getattr(model, name).weight.std().item()
        assert std == pytest.approx(gain / 8.0, rel=0.1), name


def test_modules_and_inplace_relu_after_conv():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2), nn.Conv2d(16, 16, 3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(16 * 2 * 2, 5))
    trace = traced(model, torch.randn(2, 3, 8, 8))
    assert [trace.nonlinearity[n].op for n in trace.weight_layers] == ["relu", "tanh", "linear"]


def test_residual_add_passes_the_activation_through():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return F.relu(self.b(F.gelu(self.a(x))) + x)

    trace = traced(Block(), torch.randn(4, 8))
    assert trace.nonlinearity["a"].gain_name == "relu"  # gelu takes relu's gain
    assert trace.nonlinearity["b"].op == "relu"


# --------------------------------------------------------------------------- in place


@pytest.mark.parametrize("scheme", [*BUILTIN_SCHEMES, "normal:0.1"])
def test_schemes_write_in_place(scheme):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.ReLU(), nn.Linear(20, 3))
    x = torch.randn(8, 10)
    trace = traced(model, x)
    params = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    apply_scheme(model, scheme, trace, forward=lambda: model(x))
    for name, p in model.named_parameters():
        assert p is params[name][0] and p.data_ptr() == params[name][1]


def test_restore_keeps_identity_and_skip_restores_the_rest():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.BatchNorm1d(4))
    state = snapshot_state(model)
    ids = [id(p) for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    restore_state(model, state, skip=scheme_owned_keys(model))
    assert torch.equal(model[0].weight, state["0.weight"])  # restored
    assert not torch.equal(model[1].weight, state["1.weight"])  # the scheme's to set
    restore_state(model, state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert ids == [id(p) for p in model.parameters()]


@pytest.mark.parametrize("first,second", [("kaiming_normal", "xavier_normal"),
                                          ("normal:0.3", "kaiming_normal"),
                                          ("xavier_uniform", "kaiming_uniform"),
                                          ("orthogonal", "lsuv"), ("kaiming_normal", "lsuv")])
def test_shared_draws_equal_fresh_draws_after_reseeding(first, second):
    def build():
        torch.manual_seed(1)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))

    x = torch.randn(4, 3, 6, 6)
    cached_model, fresh_model = build(), build()
    trace = traced(cached_model, x)
    cache = DrawCache(cached_model)
    for scheme in (first, second):
        torch.manual_seed(7)
        apply_scheme(cached_model, scheme, trace, lambda: cached_model(x), cache=cache)
    torch.manual_seed(7)
    apply_scheme(fresh_model, second, trace, lambda: fresh_model(x))
    for a, b in zip(cached_model.parameters(), fresh_model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------- LSUV


def output_variances(model: nn.Module, x: torch.Tensor) -> dict:
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen.setdefault(name, out.var().item())
        return hook

    hooks = [m.register_forward_hook(record(n))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@SETTINGS
@given(depth=st.integers(2, 8), width=st.integers(8, 64),
       act=st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid]), scale=st.floats(0.01, 100.0))
def test_lsuv_gives_unit_output_variance_per_layer(depth, width, act, scale):
    torch.manual_seed(0)
    layers = [nn.Linear(12, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    model = nn.Sequential(*layers, nn.Linear(width, 3))
    x = scale * torch.randn(64, 12)
    details = apply_scheme(model, "lsuv", traced(model, x), forward=lambda: model(x))
    assert all(0 <= n <= 10 for n in details["lsuv_iterations"].values())
    for name, var in output_variances(model, x).items():
        assert abs(var - 1.0) < LSUV_TOL, name


def test_lsuv_in_a_conv_net_with_batchnorm_resets_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 36, 5))
    x = torch.randn(16, 3, 6, 6)
    apply_scheme(model, "lsuv", traced(model, x), forward=lambda: model(x))
    assert all(abs(v - 1.0) < LSUV_TOL for v in output_variances(model, x).values())
    model[1].reset_running_stats()  # what the measuring pass above touched
    assert torch.equal(model[1].running_var, torch.ones(8))


# --------------------------------------------------------------------------- printed code


@pytest.mark.parametrize("scheme", [*BUILTIN_SCHEMES, "normal:0.02"])
def test_printed_code_runs_and_applies_the_scheme(scheme):
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(32, 64)
    trace = traced(model, x)
    code = scheme_code(scheme, model, trace)
    fresh = Functional()
    before = fresh.relu_layer.weight.clone()
    exec(compile(code, f"<{scheme}>", "exec"), {"model": fresh, "inputs": x})
    if scheme == "default":
        assert torch.equal(fresh.relu_layer.weight, before)
        return
    assert torch.equal(fresh.bn.weight, torch.ones(64))
    assert torch.count_nonzero(fresh.out.bias) == 0
    ours = Functional()
    torch.manual_seed(5)
    apply_scheme(ours, scheme, trace, forward=lambda: ours(x))
    for name in ("relu_layer", "tanh_layer", "leaky", "sig", "out"):
        a = getattr(fresh, name).weight.std().item()
        b = getattr(ours, name).weight.std().item()
        assert a == pytest.approx(b, rel=0.2), name
