"""Noise-aware init recommendations: a change only beyond seed noise, the same answer on every
audit, depth propagation among ties, and no extra cost for a clear (unhealthy) case."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from audit.probes.init import ranking
from audit.probes.init.engine import run_init
from audit.probes.init.schemes import redraw_own
from audit.probes.results import DepthTrend, Finding, SchemeResult
from audit.probes.run.training import TrainingSetup, synthetic_batches

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")


# --------------------------------------------------------------------------- the ranking alone


def healthy(name: str, loss: float, fold: float = 1.0) -> SchemeResult:
    return SchemeResult(name=name, verdict="healthy", loss=[2.3, loss], score=0.5,
                        depth_trend=DepthTrend(activations=fold, gradients=1.0))


def sick(name: str = "default", loss: float = 2.3) -> SchemeResult:
    return SchemeResult(name=name, verdict="unhealthy", loss=[2.3, loss], score=4.9,
                        findings=[Finding("vanishing_gradients", "0", 1e-5, 1e-3, "")],
                        depth_trend=DepthTrend(activations=1e-4, gradients=1e-4))


def runner(means: dict, noise: float, seed: int = 0):
    """A fake run of ``(scheme, init seed)``: the scheme's mean loss plus Gaussian seed noise;
    the calls made are kept."""
    calls = []

    def run(name: str, init_seed: int) -> list:
        calls.append((name, init_seed))
        rng = random.Random(f"{seed}/{name}/{init_seed}")
        return [2.3, means[name] + rng.gauss(0.0, noise)]
    run.calls = calls
    return run


def test_a_candidate_clearly_better_over_seeds_is_recommended_with_its_interval():
    schemes = [healthy("default", 2.2), healthy("lsuv", 1.9), healthy("orthogonal", 2.25)]
    run = runner({"default": 2.2, "lsuv": 1.9}, noise=0.01)
    seeds = ranking.settle(schemes, run)
    choice = ranking.recommend(schemes)
    assert seeds == ranking.FIRST_SEEDS  # decided in the first round
    assert {name for name, _ in run.calls} == {"default", "lsuv"}  # orthogonal was higher
    assert choice.scheme == "lsuv" and not choice.kept_own and choice.against == "lsuv"
    assert choice.seeds == seeds and choice.ci[0] < choice.delta < choice.ci[1] < 0
    assert len(schemes[1].loss_seeds) == seeds + 1 and schemes[2].loss_seeds is None


def test_candidates_within_noise_keep_the_models_own_init():
    schemes = [healthy("default", 2.2), healthy("lsuv", 2.1), healthy("kaiming_normal", 2.15)]
    run = runner({"default": 2.2, "lsuv": 2.2, "kaiming_normal": 2.2}, noise=0.05)
    seeds = ranking.settle(schemes, run)
    choice = ranking.recommend(schemes)
    assert choice.scheme == "default" and choice.kept_own
    assert choice.against in ("lsuv", "kaiming_normal") and choice.seeds == seeds
    assert seeds <= ranking.MAX_SEEDS
    assert choice.ci[1] > 0 or choice.delta > -0.02 * 2.2


def test_an_unhealthy_own_init_costs_no_extra_seed_and_prefers_propagation():
    schemes = [sick(), healthy("xavier_normal", 2.25, fold=730.0),
               healthy("orthogonal", 2.28, fold=1.8), healthy("kaiming_normal", 2.29, fold=1.3)]
    run = runner({}, noise=0.0)
    assert ranking.settle(schemes, run) == 1 and run.calls == []
    choice = ranking.recommend(schemes)
    assert choice.scheme == "kaiming_normal" and choice.seeds == 1 and choice.delta is None
    assert all(s.loss_seeds is None for s in schemes)


def test_a_healthy_own_init_with_the_lowest_loss_runs_nothing_more():
    schemes = [healthy("default", 2.0), healthy("lsuv", 2.1)]
    run = runner({}, noise=0.0)
    assert ranking.settle(schemes, run) == 1 and run.calls == []
    choice = ranking.recommend(schemes)
    assert choice.scheme == "default" and choice.kept_own and choice.seeds == 1


def test_a_candidate_whose_extra_seed_fails_cannot_win():
    schemes = [healthy("default", 2.2), healthy("lsuv", 1.5)]

    def run(name: str, init_seed: int) -> list:
        return [] if name == "lsuv" and init_seed == 2 else [2.3, 2.2 if name == "default" else 1.5]
    ranking.settle(schemes, run)
    assert ranking.recommend(schemes).scheme == "default"


@settings(max_examples=60, deadline=None)
@given(own=st.floats(1.0, 3.0), gaps=st.lists(st.floats(-0.5, 0.5), min_size=1, max_size=5),
       noise=st.floats(0.0, 0.2), seed=st.integers(0, 10**6), order=st.randoms())
def test_the_answer_does_not_depend_on_the_scheme_order_and_a_change_is_beyond_noise(
        own, gaps, noise, seed, order):
    names = list(ranking.PREFERENCE)[:len(gaps)]
    means = {"default": own, **{n: own + g for n, g in zip(names, gaps)}}

    def build() -> list:
        return [healthy(n, means[n] + random.Random(f"{seed}/{n}").gauss(0, noise))
                for n in ["default", *names]]
    first = build()
    run = runner(means, noise, seed)
    ranking.settle(first, run)
    answer = ranking.recommend(first)
    shuffled = build()
    order.shuffle(shuffled)
    ranking.settle(shuffled, runner(means, noise, seed))
    again = ranking.recommend(shuffled)
    assert (again.scheme, again.seeds, again.delta) == (answer.scheme, answer.seeds, answer.delta)
    per_scheme = {}
    for name, _ in run.calls:
        per_scheme[name] = per_scheme.get(name, 0) + 1
    assert all(count <= ranking.MAX_SEEDS for count in per_scheme.values())
    below = {s.name for s in first if s.name != "default" and s.loss[-1] < first[0].loss[-1]}
    assert set(per_scheme) <= below | {"default"}  # only schemes below the own init on seed 0
    assert len(per_scheme) <= ranking.CANDIDATES + 1
    if not answer.kept_own:
        assert answer.ci[1] < 0 and answer.delta <= -0.02 * own * 0.9


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_several_clear_winners_give_the_same_answer_on_every_audit(seed):
    """Every candidate beats the own init by far; among themselves they are within the loss
    tolerance: whatever the audit's noise, the same one is named (the order of preference)."""
    means = {"default": 3.1, "lsuv": 2.10, "orthogonal": 2.09, "xavier_normal": 2.11,
             "kaiming_normal": 2.12}
    noise = 0.03
    schemes = [healthy(n, m + random.Random(f"{seed}/{n}/0").gauss(0, noise))
               for n, m in means.items()]
    ranking.settle(schemes, runner(means, noise, seed))
    choice = ranking.recommend(schemes)
    assert choice.scheme == "kaiming_normal" and not choice.kept_own and choice.ci[1] < 0


def test_paired_interval_matches_the_t_distribution():
    p = ranking.paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.0])
    diffs = [-0.5, -0.5, 0.0]
    sd = math.sqrt(sum((d - p.delta) ** 2 for d in diffs) / 2)
    assert p.seeds == 3 and p.delta == pytest.approx(-1 / 3)
    assert p.high - p.delta == pytest.approx(9.925 * sd / math.sqrt(3), rel=1e-3)
    assert ranking.paired([1.0], [2.0]) is None
    assert ranking.paired([1.0, math.nan, 2.0], [1.0, 1.0, 1.0]).seeds == 2


# --------------------------------------------------------------------------- the redraw


def test_redraw_own_keeps_each_tensors_values_and_orthogonality():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    nn.init.orthogonal_(model[2].weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    redraw_own(model, 3)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value.flatten().sort().values, after[key].flatten().sort().values)
    assert not torch.equal(before["0.weight"], after["0.weight"])
    assert torch.equal(after["1.weight"], before["1.weight"])  # ones stay ones
    w = after["2.weight"]
    assert torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
    again = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    again.load_state_dict(before)
    redraw_own(again, 3, skip={"0.weight"})
    assert torch.equal(again.state_dict()["0.weight"], before["0.weight"])
    assert torch.equal(again.state_dict()["2.weight"], after["2.weight"])  # same seed, same draw


# --------------------------------------------------------------------------- target mode


def mlp(seed: int, *, bn: bool = False, scale: float = 1.0, width: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    layers, features = [], 32
    for _ in range(3 if bn else 2):
        layers += [nn.Linear(features, width), *([nn.BatchNorm1d(width)] if bn else []),
                   nn.ReLU()]
        features = width
    model = nn.Sequential(*layers, nn.Linear(features, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def teacher_batches(seed: int) -> list:
    teacher = torch.randn(32, 10, generator=torch.Generator().manual_seed(1234))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(5):
        x = torch.randn(64, 32, generator=gen)
        out.append((x, (x @ teacher).argmax(1)))
    return out


def audit(model: nn.Module, seed: int, lr: float):
    setup = TrainingSetup(model=model, data=teacher_batches(seed),
                          optimizer=lambda params: torch.optim.SGD(params, lr=lr))
    return run_init(setup, seed=seed)


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_schemes_within_noise_keep_the_models_own_init_on_every_seed(seed):
    result = audit(mlp(seed, bn=True), seed, lr=0.1)
    assert all(s.verdict == "healthy" for s in result.schemes)
    assert result.recommended == "default" and result.recommendation.kept_own
    assert result.recommendation.seeds == 1 or result.recommendation.against is not None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_but_slow_own_init_loses_to_xavier_with_its_interval(seed):
    result = audit(mlp(seed, scale=0.2, width=512), seed, lr=0.5)
    rec = result.recommendation
    assert result.verdict == "healthy" and result.scheme("default").findings == []
    assert result.recommended == "xavier_normal" and not rec.kept_own
    assert rec.against == "xavier_normal" and rec.seeds >= ranking.FIRST_SEEDS
    assert rec.ci[0] <= rec.delta <= rec.ci[1] < 0
    default = result.scheme("default")
    assert len(default.loss_seeds) >= rec.seeds + 1 and default.loss_seeds[0] == default.loss
    assert "xavier_normal_" in result.recommendation_code


def plain_relu_cnn(seed: int, depth: int = 20, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def test_a_deep_plain_relu_cnn_gets_the_same_propagating_scheme_at_no_extra_cost():
    answers = set()
    for seed in range(3):
        setup = TrainingSetup(model=plain_relu_cnn(seed), synthetic=True,
                              data=synthetic_batches((3, 16, 16), 10, 16, 5, seed=seed))
        result = run_init(setup, seed=seed)
        assert result.verdict == "unhealthy"
        assert all(s.loss_seeds is None for s in result.schemes)  # no extra seed
        chosen = result.scheme(result.recommended)
        assert chosen.verdict == "healthy" and result.recommendation.seeds == 1
        best = min(s.depth_trend.fold for s in result.schemes if s.verdict == "healthy")
        assert chosen.depth_trend.fold <= ranking.PROPAGATION_SLACK * best
        answers.add(result.recommended)
    assert answers == {"kaiming_normal"}


# --------------------------------------------------------------------------- script mode


def audit_script(tmp_path, schemes: str, *args: str) -> dict:
    out = str(tmp_path / "report")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "audit", "init", "-q", "--steps", "5",
                           "--schemes", schemes, "--out", out, "--", "python",
                           "init_noise_mlp.py", *args],
                          cwd=SCRIPTS, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(os.path.join(out, "init.json"), encoding="utf-8") as fh:
        return json.load(fh)


def test_script_mode_redraws_the_init_and_finds_the_clearly_better_scheme(tmp_path):
    doc = audit_script(tmp_path, "default,xavier_normal", "--scale", "0.2", "--width", "512",
                       "--lr", "0.5")
    rec = doc["recommendation"]
    assert doc["recommended"] == "xavier_normal" and rec["kept_own"] is False
    assert rec["ci"][1] < 0 and rec["seeds"] >= ranking.FIRST_SEEDS
    own = doc["schemes"][0]["loss_seeds"]
    assert len(own) == rec["seeds"] + 1 and len({round(c[-1], 6) for c in own}) > 1


@pytest.mark.parametrize("seed", ["0", "1"])
def test_script_mode_keeps_the_own_init_within_noise_whatever_the_scripts_seed(tmp_path, seed):
    doc = audit_script(tmp_path, "default,orthogonal", "--bn", "--seed", seed)
    assert doc["recommended"] == "default" and doc["recommendation"]["kept_own"] is True
    assert all(s["verdict"] == "healthy" for s in doc["schemes"])
