"""Tests of the reporters (``reports/``): gold files for every format, and properties.

Gold files
----------
Each sample result below (built in code: a deterministic run, a nondeterministic one with a
divergence, causes, escaped randomness, knob trials, growth and timeline, a crashed partial
one, an init result with several schemes, NaN losses and missing values, and a CI gate) is
rendered in every format and compared with ``tests/gold/<name>``, as coverage.py tests its
reporters. Volatile parts are masked before comparing (see ``SCRUBS``): the SVG charts
(matplotlib's path coordinates change between its versions; the charts have their own tests
below), the JUnit timestamp and host name. On a mismatch the test fails with a diff and
leaves the actual output next to pytest's temporary files.

To accept new output after an intended change, regenerate the gold files and review the diff::

    AUDIT_UPDATE_GOLD=1 PYTHONPATH=. python -m pytest tests/test_reports.py
    git diff tests/gold/

Properties (hypothesis): user strings never reach the HTML unescaped, JUnit XML parses and
returns its text unchanged, GitHub annotation escaping round-trips and cannot inject a
command, markdown tables cannot be broken, JSON is valid and round-trips through the result
model.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import xml.etree.ElementTree as ET
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit import registry
from audit.gate.outputs import audit_summary
from audit.probes.results import (
    AuditSummary,
    DepthTrend,
    Recommendation,
    Cause,
    Check,
    DeterminismResult,
    Divergence,
    Finding,
    GateResult,
    GrowthPoint,
    InitResult,
    KnobTrial,
    LayerStats,
    RankTimeline,
    ReplicaPoint,
    ReplicaRow,
    Replicas,
    RngEscape,
    RunInfo,
    SchemeResult,
    StepAgreement,
)
from audit.reports import charts, files, github, html, json_report, junit, markdown, terminal
from audit.reports.common import fmt_num, split_where, strip_controls

GOLD = Path(__file__).parent / "gold"
UPDATE_GOLD = os.environ.get("AUDIT_UPDATE_GOLD", "") not in ("", "0")

# --------------------------------------------------------------------------- sample results

ENV = {
    "python": "3.11.9",
    "torch": "2.4.1+cu121",
    "numpy": "1.26.4",
    "platform": "Linux-6.5.0-x86_64-with-glibc2.35",
    "cuda": "12.1",
    "cudnn": "90100",
    "gpu": "NVIDIA H100 80GB HBM3",
    "flags": {
        "torch.backends.cudnn.benchmark": True,
        "torch.backends.cudnn.deterministic": False,
        "torch.are_deterministic_algorithms_enabled()": False,
        "CUBLAS_WORKSPACE_CONFIG": None,
        "PYTHONHASHSEED": None,
        "torch.get_num_threads()": 16,
    },
}


def _timeline(steps: int, first_bad: int | None, stage: str | None, missing_from: int | None = None):
    rows = [StepAgreement(step=None, stages={"init": "agree"})]
    after = ("data", "rng", "forward", "backward", "optimizer")
    for step in range(steps):
        if missing_from is not None and step >= missing_from:
            rows.append(StepAgreement(step=step, stages={s: "missing" for s in after}))
            continue
        if first_bad is None or step < first_bad:
            states = {s: "agree" for s in after}
        elif step == first_bad:
            k = after.index(stage)
            states = {s: ("agree" if i < k else "differ") for i, s in enumerate(after)}
        else:
            states = {"data": "agree", "rng": "agree", "forward": "differ", "backward": "differ",
                      "optimizer": "differ"}
        rows.append(StepAgreement(step=step, stages=states))
    return rows


def nondeterministic_result() -> DeterminismResult:
    growth = [GrowthPoint(step=s, max_abs_diff=0.0, rel_l2=0.0) for s in range(3)]
    diff, rel = 5.96e-08, 1.1e-09
    for s in range(3, 12):
        growth.append(GrowthPoint(step=s, max_abs_diff=diff, rel_l2=rel))
        diff, rel = diff * 3.1, rel * 3.4
    return DeterminismResult(
        verdict="nondeterministic", runs=2, steps=12, seed=0, device="cuda",
        environment=ENV,
        first_divergence=Divergence(step=3, stage="backward", module="encoder.embed",
                                    tensor="encoder.embed.weight", max_abs_diff=5.96e-08),
        causes=[
            Cause(source="nondeterministic_algorithm", confirmed=True,
                  evidence="With torch.use_deterministic_algorithms(True) both runs agree "
                           "through step 3; without it the gradient of encoder.embed.weight "
                           "differs. The backward of index_add_ accumulates with atomic adds "
                           "on CUDA, so the order of the additions changes from run to run.",
                  fix='import os\nos.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"\n'
                      "torch.use_deterministic_algorithms(True)",
                  where="models/encoder.py:41"),
            Cause(source="unseeded_rng", confirmed=False,
                  evidence="numpy.random.default_rng() is called without a seed at "
                           "data/augment.py:17; its draws are not used before step 3.",
                  fix="rng = numpy.random.default_rng(seed)", where="data/augment.py:17"),
        ],
        target="examples/embed_model.py:build", mode="target",
        run_info=[RunInfo(index=0, steps_completed=12, status="ok", exit_code=0, seconds=4.21),
                  RunInfo(index=1, steps_completed=12, status="ok", exit_code=0, seconds=4.18)],
        timeline=_timeline(12, 3, "backward"),
        growth=growth,
        rng_escapes=[
            RngEscape(kind="numpy.random.default_rng()", where="data/augment.py:17", count=1,
                      detail="created without a seed"),
            RngEscape(kind="random.Random()", where="data/augment.py:29", count=12,
                      detail="seeded from the OS"),
        ],
        knob_trials=[
            KnobTrial(knob="torch.use_deterministic_algorithms(True)",
                      source="nondeterministic_algorithm", removed=True, steps=4,
                      detail="runs agree through step 3"),
            KnobTrial(knob="PYTHONHASHSEED=0", source="hash_seed", removed=False, steps=4),
            KnobTrial(knob="torch.backends.cudnn.benchmark = False", source="cudnn_benchmark",
                      removed=False, steps=4),
            KnobTrial(knob="DataLoader(num_workers=0)", source="dataloader", removed=False,
                      steps=4),
            KnobTrial(knob="torch.set_num_threads(1)", source="thread_count", removed=False,
                      steps=4),
        ],
        detail={"replayed_step": 3, "modules_compared": 14,
                "first_module": "encoder.embed: inputs agree, weight gradient differs"},
        seconds=31.4,
    )


def deterministic_result() -> DeterminismResult:
    env = {k: v for k, v in ENV.items() if k not in ("cuda", "cudnn", "gpu")}
    env["flags"] = {"torch.get_num_threads()": 8, "PYTHONHASHSEED": None}
    return DeterminismResult(
        verdict="deterministic", runs=2, steps=20, seed=0, device="cpu", environment=env,
        target="audit.example:build",
        run_info=[RunInfo(index=i, steps_completed=20, status="ok", exit_code=0, seconds=2.5)
                  for i in range(2)],
        timeline=_timeline(20, None, None),
        growth=[GrowthPoint(step=s, max_abs_diff=0.0, rel_l2=0.0) for s in range(20)],
        seconds=6.2,
        rng_escapes=[  # made by a library called at the user's line, never drawn from: a note
            RngEscape(kind="numpy.random.SeedSequence()", where="train.py:21", count=2,
                      detail="seeded from the operating system", use="unused",
                      made_by="gymnasium.vector.sync_vector_env.SyncVectorEnv")],
    )


def crashed_result() -> DeterminismResult:
    return DeterminismResult(
        verdict="deterministic", runs=2, steps=8, seed=1, device="cpu",
        environment={"python": "3.11.9", "torch": "2.4.1"},
        target="train.py", mode="script",
        run_info=[
            RunInfo(index=0, steps_completed=8, status="ok", exit_code=0, seconds=3.0),
            RunInfo(index=1, steps_completed=5, status="crashed", exit_code=1, seconds=2.1,
                    message="RuntimeError: mat1 and mat2 shapes cannot be multiplied "
                            "(32x100 and 128x10) at train.py:58"),
        ],
        timeline=_timeline(8, None, None, missing_from=5),
        growth=[GrowthPoint(step=s, max_abs_diff=0.0, rel_l2=0.0) for s in range(5)],
        error="run 1 crashed at step 5: RuntimeError: mat1 and mat2 shapes cannot be "
              "multiplied (32x100 and 128x10)",
        seconds=5.3,
    )


def _layers(gain_act: float, gain_grad: float, *, dead=0.3, sat=None, nonfinite_from=None):
    names = ["net.0", "net.2", "net.4", "net.6", "net.8", "net.10", "net.12", "head"]
    layers = []
    for depth, name in enumerate(names):
        act_std = 0.9 * gain_act ** depth
        grad = 0.05 * gain_grad ** (len(names) - 1 - depth)
        bad = nonfinite_from is not None and depth >= nonfinite_from
        layers.append(LayerStats(
            name=name, type="Linear", depth=depth,
            grad_norm=float("nan") if bad else round(grad, 12),
            weight_norm=round(9.1 * (1 + 0.01 * depth), 4),
            act_mean=round(0.35 * act_std, 6) if not bad else None,
            act_std=float("inf") if bad else round(act_std, 12),
            dead_fraction=None if name == "head" else round(min(dead * (1 + 0.1 * depth), 1.0), 4),
            saturated_fraction=None if sat is None or name == "head" else round(sat * depth / 7, 4),
            grad_weight_ratio=None if bad else round(grad / 9.1, 12),
            output_grad_norm=None if bad else round(grad * 0.3, 12),
            nonlinearity="linear" if name == "head" else "relu",
            nonfinite=bad,
        ))
    return layers


def init_result() -> InitResult:
    default = SchemeResult(
        name="default", verdict="unhealthy", layers=_layers(0.58, 0.6, dead=0.42),
        findings=[
            Finding(kind="vanishing_activations", layer="net.12", value=0.0034, threshold=0.01,
                    message="The output std falls by 0.58x per layer, to 0.0034 at net.12."),
            Finding(kind="vanishing_gradients", layer="net.0", value=0.0014, threshold=0.01,
                    message="The gradient norm shrinks 36x from head to net.0 "
                            "(log-linear slope -0.51 per layer)."),
            Finding(kind="dead_units", layer="net.12", value=0.8, threshold=0.6,
                    message="80% of net.12's ReLU units output zero for every sample."),
        ],
        loss=[2.3026, 2.3019, 2.3011, 2.3004, 2.2998], score=0.21, seconds=0.8,
        depth_trend=DepthTrend(activations=0.0034, gradients=720.0))
    kaiming = SchemeResult(name="kaiming_normal", verdict="healthy",
                           layers=_layers(1.0, 1.0, dead=0.3),
                           loss=[2.3412, 2.1021, 1.9234, 1.8011, 1.7102], score=0.94, seconds=0.7,
                           depth_trend=DepthTrend(activations=1.1, gradients=0.93))
    kaiming_u = SchemeResult(name="kaiming_uniform", verdict="healthy",
                             layers=_layers(0.99, 1.01, dead=0.31),
                             loss=[2.3391, 2.1187, 1.9402, 1.8190, 1.7318], score=0.92)
    xavier = SchemeResult(
        name="xavier_normal", verdict="unhealthy", layers=_layers(0.707, 0.75, dead=0.33),
        findings=[Finding(kind="vanishing_activations", layer="net.12", value=0.11,
                          threshold=0.2, message="The output variance halves at every "
                                                 "ReLU layer (ratio 0.50).")],
        loss=[2.3101, 2.2473, 2.1902, 2.1388, 2.0931], score=0.55)
    lsuv = SchemeResult(name="lsuv", verdict="healthy", layers=_layers(1.0, 0.98, dead=0.29),
                        loss=[2.3370, 2.0915, 1.9121, 1.7990, 1.7205], score=0.93)
    big = SchemeResult(
        name="normal:1.0", verdict="unhealthy", layers=_layers(9.0, 8.0, dead=0.5,
                                                               nonfinite_from=6),
        findings=[
            Finding(kind="exploding_activations", layer="net.4", value=656.1, threshold=100.0,
                    message="The output std grows 9x per layer."),
            Finding(kind="nonfinite", layer="net.10", value=None, threshold=None,
                    message="Activations of net.10 are Inf in the first forward pass."),
        ],
        loss=[812.4, float("nan"), float("nan"), None, None], score=0.0)
    orth = SchemeResult(name="orthogonal", verdict="unhealthy", error="orthogonal init failed "
                        "for net.0: the weight has 0 elements", score=None)
    return InitResult(
        verdict="unhealthy", recommended="kaiming_normal",
        schemes=[default, kaiming, kaiming_u, xavier, orth, lsuv, big],
        target="examples/deep_mlp.py:build", steps=5, seed=0, device="cpu",
        environment={"python": "3.11.9", "torch": "2.4.1", "numpy": "1.26.4",
                     "platform": "Linux-6.5.0-x86_64-with-glibc2.35"},
        thresholds={"vanishing_gradient_slope": -0.35, "activation_ratio_low": 0.5,
                    "dead_fraction": 0.6, "saturation_margin": 0.02},
        recommendation_code="import torch.nn as nn\n\nfor m in model.modules():\n"
                            "    if isinstance(m, (nn.Linear, nn.Conv2d)):\n"
                            "        nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\")\n"
                            "        if m.bias is not None:\n"
                            "            nn.init.zeros_(m.bias)",
        recommendation_reason="It keeps the activation std flat across depth (ratio 1.00 per "
                              "layer) and reaches the lowest loss after 5 steps (1.71).",
        seconds=6.0,
        recommendation=Recommendation("kaiming_normal", "It keeps the activation std flat."),
    )


def gate_result() -> GateResult:
    det, ini = nondeterministic_result(), init_result()
    checks = [
        Check(audit="determinism", name="runs agree", passed=False,
              message="The runs first part at step 3, in the backward pass of encoder.embed "
                      "(max |diff| 5.96e-08). Cause: a nondeterministic kernel (confirmed).",
              fix='os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"\n'
                  "torch.use_deterministic_algorithms(True)",
              where="models/encoder.py:41"),
        Check(audit="determinism", name="no unseeded generators", passed=False,
              message="numpy.random.default_rng() is created without a seed.",
              fix="rng = numpy.random.default_rng(seed)", where="data/augment.py:17"),
        Check(audit="determinism", name="all runs completed", passed=True),
        Check(audit="determinism", name="cuDNN kernels deterministic", passed=True,
              skipped=True, message="no CUDA device"),
        Check(audit="init", name="default init healthy", passed=False,
              message="Vanishing activations at net.12, vanishing gradients at net.0, dead "
                      "units at net.12. Recommended: kaiming_normal.",
              fix=ini.recommendation_code),
        Check(audit="init", name="recommended init healthy", passed=True),
    ]
    return GateResult(checks=checks, reports={"determinism": "determinism.html",
                                              "init": "init.html"},
                      summaries={k: audit_summary(registry.get(k), r)
                                 for k, r in (("determinism", det), ("init", ini))},
                      baseline_regressions=["init: net.12 vanishing_activations is new since "
                                            "the baseline"])


def distributed_result() -> DeterminismResult:
    """``--nproc 2``: runs agree, replicas part at step 1 in a buffer (with a user string to
    escape), a sampler replays its order."""
    grid = [ReplicaRow(None, ["agree", "agree"]), ReplicaRow(0, ["agree", "agree"]),
            ReplicaRow(1, ["agree", "buffers"]), ReplicaRow(2, ["agree", "both"])]
    return DeterminismResult(
        verdict="deterministic", runs=2, steps=3, seed=0, device="cpu", environment=ENV,
        causes=[
            Cause(source="unsynced_state", confirmed=True,
                  evidence="buffer 'norm.<mean>' on rank 1 differs from rank 0's at step 1: it "
                           "differs at the start of the forward pass, and DDP was built with "
                           "broadcast_buffers=False",
                  fix="DDP(model, broadcast_buffers=True)", where="models/norm.py:12"),
            Cause(source="sampler_epoch", confirmed=True,
                  evidence="the DistributedSampler drew the same order in pass 1 and pass 2",
                  fix="sampler.set_epoch(epoch)", where="train.py:30")],
        target="train.py:build", mode="target",
        run_info=[RunInfo(index=i, steps_completed=3, status="ok", exit_code=0, seconds=2.0)
                  for i in range(2)],
        timeline=_timeline(3, None, None), nproc=2,
        replicas=Replicas(verdict="diverged", first=ReplicaPoint(1, "norm.<mean>", 1), run=0,
                          kind="buffer", grid=grid),
        rank_timelines=[RankTimeline(rank, _timeline(3, None, None)) for rank in range(2)],
        detail={"sharding": "ranks saw disjoint samples within an epoch",
                "rank_rng": "the ranks start from different torch RNG states"},
    )


SAMPLES = {
    "nondeterministic": nondeterministic_result,
    "deterministic": deterministic_result,
    "crashed": crashed_result,
    "distributed": distributed_result,
}


# --------------------------------------------------------------------------- gold files

#: (pattern, replacement) applied to output and gold alike before comparing.
SCRUBS = [
    (re.compile(r"<svg\b.*?</svg>\n?", re.S), "<svg><!-- chart masked --></svg>\n"),
    (re.compile(r'timestamp="[^"]*"'), 'timestamp="TIMESTAMP"'),
    (re.compile(r'hostname="[^"]*"'), 'hostname="HOSTNAME"'),
]


def scrub(text: str) -> str:
    for pattern, replacement in SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def compare_gold(name: str, actual: str, tmp_path: Path) -> None:
    """Compare ``actual`` (scrubbed) with ``tests/gold/name``; rewrite it when
    ``AUDIT_UPDATE_GOLD=1``."""
    actual = scrub(actual)
    path = GOLD / name
    if UPDATE_GOLD:
        GOLD.mkdir(exist_ok=True)
        files.write_atomic(path, actual)
        return
    if not path.exists():
        pytest.fail(f"no gold file {path}; create it with AUDIT_UPDATE_GOLD=1")
    expected = scrub(path.read_text(encoding="utf-8"))
    if actual != expected:
        (tmp_path / name).write_text(actual, encoding="utf-8")
        diff = "".join(list(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), f"gold/{name}",
            f"actual/{name}"))[:120])
        pytest.fail(f"{name} differs from its gold file (actual output in {tmp_path / name}; "
                    f"AUDIT_UPDATE_GOLD=1 accepts it):\n{diff}")


@lru_cache(maxsize=None)
def _determinism_page(kind: str) -> str:
    return html.determinism_html(SAMPLES[kind]())


@lru_cache(maxsize=None)
def _init_page() -> str:
    return html.init_html(init_result())


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_gold_determinism(kind, tmp_path):
    result = SAMPLES[kind]()
    compare_gold(f"determinism_{kind}.json", json_report.dumps(result), tmp_path)
    compare_gold(f"determinism_{kind}.txt",
                 terminal.determinism_summary(result, "audit-report/determinism.html"),
                 tmp_path)
    compare_gold(f"determinism_{kind}.html", _determinism_page(kind), tmp_path)


def test_gold_init(tmp_path):
    result = init_result()
    compare_gold("init.json", json_report.dumps(result), tmp_path)
    compare_gold("init.txt", terminal.init_summary(result, "audit-report/init.html"), tmp_path)
    compare_gold("init.html", _init_page(), tmp_path)


def init_noise_result() -> InitResult:
    """A healthy own init that no scheme beats beyond seed noise: the close candidates ran
    on four init seeds."""
    def healthy(name: str, losses: list, trend: tuple, score: float) -> SchemeResult:
        curves = [[2.3026, 2.25, value] for value in losses]
        return SchemeResult(name=name, verdict="healthy", layers=_layers(1.0, 1.0),
                            loss=curves[0], score=score,
                            loss_seeds=curves if len(curves) > 1 else None,
                            depth_trend=DepthTrend(*trend))
    schemes = [healthy("default", [2.21, 2.19, 2.24, 2.20], (0.96, 0.31), 0.88),
               healthy("lsuv", [2.18, 2.26, 2.15, 2.27], (1.0, 0.39), 0.87),
               healthy("orthogonal", [2.19, 2.22, 2.25, 2.16], (1.06, 0.36), 0.87),
               healthy("xavier_normal", [2.45], (4.4, 0.1), 0.91)]
    reason = ("The model's own init is healthy and no scheme beats it beyond seed noise: lsuv "
              "minus default, loss after 3 steps, is +0.01 (99% CI -0.19 to +0.21, 3 init "
              "seeds paired by seed); the other healthy schemes are within noise of it or "
              "worse.")
    return InitResult(
        verdict="healthy", recommended="default", schemes=schemes, target="pkg.model:build",
        steps=3, recommendation_reason=reason, seconds=4.0,
        recommendation=Recommendation("default", reason, kept_own=True, against="lsuv", seeds=3,
                                      delta=0.01, ci=[-0.19, 0.21]))


def test_gold_init_noise(tmp_path):
    result = init_noise_result()
    text = terminal.init_summary(result, "audit-report/init.html")
    compare_gold("init_noise.txt", text, tmp_path)
    data = json.loads(json_report.dumps(result))
    assert data["recommendation"] == {"scheme": "default", "reason": result.recommendation_reason,
                                      "kept_own": True, "against": "lsuv", "seeds": 3,
                                      "delta": 0.01, "ci": [-0.19, 0.21]}
    assert [len(s["loss_seeds"] or []) for s in data["schemes"]] == [4, 4, 4, 0]
    assert InitResult.from_dict(data).recommendation == result.recommendation
    row = next(line for line in text.splitlines() if line.lstrip("* ").startswith("lsuv"))
    assert "2.2200" in row and "(4)" in row and "1/0.39" in row  # median, seeds, depth trends
    page = html.init_html(result, charts=False)
    assert "2.2200" in page and "(4)" in page


def test_gold_gate(tmp_path):
    gate = gate_result()
    compare_gold("check.txt", terminal.check_summary(gate), tmp_path)
    compare_gold("index.html", html.index_html(gate), tmp_path)
    compare_gold("junit.xml", junit.junit_xml(gate.checks), tmp_path)
    compare_gold("summary.md", markdown.summary_markdown(gate), tmp_path)
    compare_gold("annotations.txt", "\n".join(github.annotations(gate.checks)) + "\n", tmp_path)


def test_gold_color(tmp_path):
    text = terminal.determinism_summary(nondeterministic_result(), None, color=True, width=72)
    compare_gold("determinism_nondeterministic_color.txt", text, tmp_path)


def test_scrub_masks_only_volatile_parts():
    page = _determinism_page("nondeterministic")
    assert page.count("<svg") == 1
    masked = scrub(page)
    assert "chart masked" in masked and "<path" not in masked
    assert "encoder.embed" in masked


# --------------------------------------------------------------------------- files


def test_write_atomic_creates_and_replaces(tmp_path):
    target = tmp_path / "out" / "report.html"
    files.write_atomic(target, "first")
    files.write_atomic(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert os.listdir(target.parent) == ["report.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_write_atomic_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        files.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_write_atomic_bytes_and_unencodable(tmp_path):
    files.write_atomic(tmp_path / "a.bin", b"\x00\x01")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    files.write_atomic(tmp_path / "b.txt", "lone \udc80 surrogate")
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "lone ? surrogate"


def test_writers_write_what_they_render(tmp_path):
    result = nondeterministic_result()
    json_report.write(result, tmp_path / "determinism.json")
    assert (tmp_path / "determinism.json").read_text(encoding="utf-8") == \
        json_report.dumps(result)
    gate = gate_result()
    junit.write(gate.checks, str(tmp_path / "junit.xml"))
    ET.parse(tmp_path / "junit.xml")


# --------------------------------------------------------------------------- JSON


def _strict_loads(text: str):
    def no_constants(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def test_json_has_contract_order_and_no_nan():
    text = json_report.dumps(init_result())
    data = _strict_loads(text)
    assert list(data)[:4] == ["schema", "verdict", "recommended", "schemes"]
    normal = next(s for s in data["schemes"] if s["name"] == "normal:1.0")
    assert normal["loss"] == [812.4, None, None, None, None]
    assert normal["layers"][7]["grad_norm"] is None and normal["layers"][7]["act_std"] is None
    det = _strict_loads(json_report.dumps(nondeterministic_result()))
    assert list(det)[:9] == ["schema", "verdict", "runs", "steps", "seed", "device",
                             "environment", "first_divergence", "causes"]
    assert det["first_divergence"]["stage"] == "backward"


def test_json_is_stable_and_plain():
    assert json_report.dumps(nondeterministic_result()) == \
        json_report.dumps(nondeterministic_result())
    np = pytest.importorskip("numpy")
    result = deterministic_result()
    result.environment["np"] = np.float32(1.5)
    result.environment["arr"] = np.array([1.0, np.nan])
    result.environment["inf"] = float("inf")
    result.environment["path"] = Path("a/b")
    data = _strict_loads(json_report.dumps(result))
    assert data["environment"]["np"] == 1.5
    assert data["environment"]["arr"] == [1.0, None]
    assert data["environment"]["inf"] is None
    assert data["environment"]["path"] == "a/b"


@pytest.mark.parametrize("make", [nondeterministic_result, deterministic_result, crashed_result])
def test_json_round_trip_samples(make):
    result = make()
    back = DeterminismResult.from_dict(_strict_loads(json_report.dumps(result)))
    assert back == result


def test_json_round_trip_init_with_nan():
    result = init_result()
    data = _strict_loads(json_report.dumps(result))
    back = InitResult.from_dict(data)
    assert back.to_dict() == data
    assert back.scheme("normal:1.0").loss[1] is None


# --------------------------------------------------------------------------- terminal


def test_terminal_determinism_content():
    text = terminal.determinism_summary(nondeterministic_result(), "out/determinism.html")
    first = text.splitlines()[0]
    assert "FAIL" in first and "Nondeterministic" in first
    for needle in ("step", "backward", "encoder.embed", "encoder.embed.weight", "5.96e-08",
                   "confirmed", "not confirmed", "models/encoder.py:41",
                   "torch.use_deterministic_algorithms(True)", "data/augment.py:17",
                   "Report: out/determinism.html"):
        assert needle in text, needle
    assert "\x1b" not in text


def test_terminal_width_and_color():
    result = nondeterministic_result()
    result.causes[0].evidence = "word " * 200
    text = terminal.determinism_summary(result, None, width=60)
    assert max(len(line) for line in text.splitlines()) <= 60
    colored = terminal.determinism_summary(result, None, width=60, color=True)
    assert "\x1b[1;31m" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == text


def test_terminal_strips_escape_sequences_from_user_strings():
    result = nondeterministic_result()
    result.first_divergence.module = "evil\x1b[2J\x07module"
    text = terminal.determinism_summary(result, None)
    assert "\x1b" not in text and "\x07" not in text
    assert "evil[2Jmodule" in text


def test_terminal_deterministic_and_crashed():
    text = terminal.determinism_summary(deterministic_result(), None)
    assert text.splitlines()[0].endswith("Deterministic") and "PASS" in text
    assert "agree bit for bit" in text and "Report:" not in text
    crashed = terminal.determinism_summary(crashed_result(), "r.html")
    assert "ERROR" in crashed.splitlines()[0]
    assert "run 1: crashed after 5 of 8 steps (exit 1)" in crashed
    assert "through step 4" in crashed


def test_terminal_init_table_aligned():
    text = terminal.init_summary(init_result(), "out/init.html")
    lines = text.splitlines()
    header = next(i for i, l in enumerate(lines) if l.lstrip().startswith("scheme"))
    rows = lines[header + 1: header + 8]
    assert rows[0].lstrip().startswith("default")
    assert rows[1].startswith("* kaiming_normal") and rows[1].endswith("recommended")
    verdict_col = lines[header].index("verdict")
    assert all(row[verdict_col - 1] == " " for row in rows)
    assert "nan" in next(r for r in rows if "normal:1.0" in r)
    assert "nn.init.kaiming_normal_(m.weight" in text
    assert "What to do:" in text and "Vanishing activations at net.12" in text


def test_terminal_check_summary():
    text = terminal.check_summary(gate_result())
    assert text.splitlines()[0].endswith("3 of 6 checks failed")
    lines = text.splitlines()
    assert [l.split()[0] for l in lines if l.startswith("  ") and l.split()[0].isupper()] == \
        ["FAIL", "FAIL", "PASS", "SKIP", "FAIL", "PASS"]
    assert "at models/encoder.py:41" in text and "determinism: determinism.html" in text
    ok = GateResult(checks=[Check(audit="init", name="default init healthy", passed=True)])
    assert "all 1 checks passed" in terminal.check_summary(ok)


# --------------------------------------------------------------------------- HTML


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.data: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            self.attrs.add(name)
            if name == "id":
                self.ids.append(value)

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.data.append(data)


def parse_html(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    collector.close()
    return collector


HTML_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "header", "footer",
             "div", "h1", "h2", "h3", "p", "ul", "li", "b", "a", "nav", "section", "article",
             "table", "thead", "tbody", "tr", "th", "td", "code", "pre", "span", "dl", "dt",
             "dd", "details", "summary", "figure", "figcaption", "wbr"}
SVG_TAGS = {"svg", "defs", "g", "path", "use", "text", "clippath", "rect", "style"}


def test_html_pages_structure():
    page = _determinism_page("nondeterministic")
    doc = parse_html(page)
    assert doc.tags <= HTML_TAGS | SVG_TAGS, doc.tags - HTML_TAGS - SVG_TAGS
    assert "script" not in doc.tags and not any(a.startswith("on") for a in doc.attrs)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") \
        .replace('xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    assert page.index("Nondeterministic") < page.index('id="timeline"') < \
        page.index('id="growth"') < page.index('id="causes"')
    assert page.count('class="differ first"') == 1
    assert len(doc.ids) == len(set(doc.ids)), "duplicate ids in the page"
    init_page = parse_html(_init_page())
    assert init_page.tags <= HTML_TAGS | SVG_TAGS
    assert len(init_page.ids) == len(set(init_page.ids))
    assert _init_page().count("<svg") == 4


def test_html_header_shows_the_target_as_typed():
    """The header's label is upper-cased by CSS; the user's text inside it is not."""
    typed = "Runs/Train_CIFAR.py:Build,lr=0.1"
    for result, render in ((deterministic_result(), html.determinism_html),
                           (init_result(), html.init_html)):
        result.target = typed
        page = render(result, charts=False)
        eyebrow = re.search(r'<div class="eyebrow">(.*?)</div>', page, re.S).group(1)
        assert re.search(r'<span class="typed">([^<]*)</span>', eyebrow).group(1) == typed
        assert re.search(r"\.eyebrow \.typed \{[^}]*text-transform: none", page)
    templates = os.path.join(os.path.dirname(html.__file__), "templates")
    for name in sorted(os.listdir(templates)):
        with open(os.path.join(templates, name), encoding="utf-8") as fh:
            for eyebrow in re.findall(r'<div class="eyebrow">(.*?)</div>', fh.read()):
                user = re.sub(r'<span class="typed">\{\{[^}]*\}\}</span>', "", eyebrow)
                assert not re.search(r"\{\{ r\.(b\.)?(target|metric)", user), (name, eyebrow)


def test_html_crashed_shows_error():
    page = _determinism_page("crashed")
    assert page.index('id="error"') < page.index('id="timeline"')
    assert "mat1 and mat2 shapes cannot be multiplied" in page
    assert page.count('class="missing"') == 15


def test_html_timeline_collapses_long_runs():
    result = deterministic_result()
    result.timeline = _timeline(200, 120, "forward")
    result.first_divergence = Divergence(step=120, stage="forward", module="m")
    page = html.determinism_html(result, charts=False)
    assert "steps 0–119" in page and "steps 121–199" in page and ">step 120<" in page
    assert page.count('class="differ first"') == 1


def test_divergence_at_init_and_partial_nondeterministic():
    result = nondeterministic_result()
    result.first_divergence = Divergence(step=None, stage="init", module="encoder.embed",
                                         tensor="encoder.embed.weight", max_abs_diff=0.25)
    result.timeline = [StepAgreement(step=None, stages={"init": "differ"})] + \
        result.timeline[1:]
    page = html.determinism_html(result, charts=False)
    init_row = re.search(r'<tr class="init-row">.*?</tr>', page, re.S).group(0)
    assert 'class="differ first"' in init_row and page.count(" first\"") == 1
    assert "before step 0" in page
    text = terminal.determinism_summary(result, None)
    assert "before the first step" in text and "step        before the first step" in text
    result.error = "run 1 was killed"
    page = html.determinism_html(result, charts=False)
    assert '<header class="hero fail">' in page and "run 1 was killed" in page
    assert "Nondeterministic (a run crashed; partial result)" in page


def test_html_minimal_results_render():
    bare = DeterminismResult(verdict="deterministic", runs=2, steps=0, seed=0, device="cpu")
    page = html.determinism_html(bare)
    assert "Deterministic" in page and "<svg" not in page
    empty_init = InitResult(verdict="healthy", recommended=None)
    page = html.init_html(empty_init)
    assert "No scheme can be recommended" in page
    assert "Gate" not in html.index_html(GateResult())
    init_error = InitResult(verdict="unhealthy", recommended=None, error="target crashed")
    assert "target crashed" in html.init_html(init_error)


def test_html_index_links_are_relative():
    gate = gate_result()
    gate.reports = {"determinism": "javascript:alert(1)", "init": "sub dir/init.html"}
    page = html.index_html(gate)
    assert 'href="javascript%3Aalert%281%29"' in page
    assert 'href="sub%20dir/init.html"' in page


EVIL = ["<script>alert(1)</script>", "\"'><img src=x onerror=alert(1)>", "a & b &amp; c",
        "$x$ \\$ {{ 7*7 }} {% if %}", "ünïcødé ✓ 模块", "ctrl\x00\x07\x1b[31m\r\nnext",
        "]]><!-- -->", "</svg><script>", "javascript:alert(1)"]
user_text = st.one_of(st.sampled_from(EVIL), st.text(
    alphabet=st.one_of(st.sampled_from("<>&\"'`|$%:,\\\r\n\t\x00\x1b#*_[]"),
                       st.characters(blacklist_categories=("Cs",))),
    max_size=40))


def _evil_determinism(s: str) -> DeterminismResult:
    result = nondeterministic_result()
    result.target = s
    result.device = s
    result.first_divergence.module = s
    result.first_divergence.tensor = s
    result.causes[0].evidence = s
    result.causes[0].fix = s
    result.causes[0].where = s
    result.rng_escapes[0].kind = s
    result.rng_escapes[0].where = s
    result.knob_trials[0].knob = s
    result.knob_trials[0].detail = s
    result.run_info[0].message = s
    result.run_info[0].status = s
    result.environment = {s: s, "flags": {s: s}}
    result.detail = {s: s}
    result.error = s
    return result


def _evil_init(s: str) -> InitResult:
    result = init_result()
    result.target = s
    result.recommendation_code = s
    result.recommendation_reason = s
    default = result.scheme("default")
    default.layers[0].name = s
    default.layers[0].type = s
    default.findings[0].layer = s
    default.findings[0].message = s
    default.findings[1].kind = s
    result.schemes[3].name = s
    result.schemes[3].error = s
    result.environment = {s: s}
    result.thresholds = {s: s}
    return result


def _evil_gate(s: str) -> GateResult:
    return GateResult(
        checks=[Check(audit=s, name=s, passed=False, message=s, fix=s, where=s),
                Check(audit="init", name=s, passed=True, skipped=True, message=s)],
        reports={s: s}, baseline_regressions=[s],
        summaries={s: AuditSummary(s, "fail", s, s, s, s)})


def _assert_safe(page: str, s: str) -> None:
    doc = parse_html(page)
    assert doc.tags <= HTML_TAGS | SVG_TAGS, doc.tags - HTML_TAGS - SVG_TAGS
    assert not any(a.startswith("on") for a in doc.attrs)
    assert "<script" not in page.lower()
    clean = strip_controls(s)
    text = "".join(doc.data)
    if clean.strip():
        # The string comes back verbatim once the HTML escaping is undone.
        assert clean in text or " ".join(clean.split()) in " ".join(text.split())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_text)
def test_html_escapes_user_strings(s):
    _assert_safe(html.determinism_html(_evil_determinism(s), charts=False), s)
    _assert_safe(html.init_html(_evil_init(s), charts=False), s)
    _assert_safe(html.index_html(_evil_gate(s)), s)


# --------------------------------------------------------------------------- charts


def _svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return ["".join(e.itertext()) for e in root.iter() if e.tag.endswith("}text")]


def _page_chart(page: str, label: str) -> str:
    return next(svg for svg in re.findall(r"<svg\b.*?</svg>", page, re.S)
                if f'aria-label="{label}' in svg)


def test_growth_chart_log_scale_zero_line_and_divergence():
    svg = _page_chart(_determinism_page("nondeterministic"), "How the difference")
    texts = _svg_texts(svg)
    assert "0" in texts and "10⁻⁸" in texts
    assert " first divergence (step 3)" in texts
    assert "max |diff| of any parameter" in texts
    assert not re.search(r'<svg[^>]*\swidth=', svg)


def test_charts_are_reproducible_and_prefixed():
    first = _page_chart(_determinism_page("nondeterministic"), "How the difference")
    second = charts.growth_chart(nondeterministic_result().growth, 3)
    assert first.strip() == second.strip()
    ids = re.findall(r'\bid="([^"]+)"', first)
    assert ids and all(i.startswith("growth-") for i in ids)
    refs = re.findall(r'(?:url\(#|href="#)([^")]+)', first)
    assert refs and set(refs) <= set(ids)
    assert "Date" not in first and "Matplotlib v" not in first and "<?xml" not in first


def test_charts_robust_to_degenerate_inputs():
    assert charts.growth_chart([]) == ""
    assert charts.growth_chart([GrowthPoint(step=0, max_abs_diff=None, rel_l2=None)]) == ""
    one = charts.growth_chart([GrowthPoint(step=0, max_abs_diff=float("inf"),
                                           rel_l2=float("nan")),
                               GrowthPoint(step=1, max_abs_diff=1e-7, rel_l2=None)], 1)
    assert "first divergence (step 1)" in one
    zeros = _page_chart(_determinism_page("deterministic"), "How the difference")
    assert "identical after every step" in zeros and ">0</text>" in zeros
    assert charts.grad_norm_chart([]) == ""
    assert charts.loss_chart([SchemeResult(name="default", verdict="healthy")]) == ""
    single = SchemeResult(name="default", verdict="healthy",
                          layers=[LayerStats(name="fc", type="Linear", depth=0, grad_norm=0.5,
                                             act_std=1.0, dead_fraction=0.0)],
                          loss=[2.3])
    for draw in (charts.act_std_chart, charts.dead_saturated_chart):
        assert "<svg" in draw([single], None), draw.__name__
    assert "<svg" in charts.loss_chart([single])  # a loss curve of a single step
    broken = SchemeResult(name="normal:9", verdict="unhealthy",
                          layers=[LayerStats(name="fc", type="Linear", depth=0,
                                             grad_norm=float("nan"), act_std=None)],
                          loss=[float("nan"), None])
    assert "no finite values" in charts.grad_norm_chart([broken])
    assert "every loss was non-finite" in charts.loss_chart([broken])
    assert charts.dead_saturated_chart([broken]) == ""


def test_init_charts_emphasize_default_and_recommended():
    page = _init_page()
    svg = _page_chart(page, "Gradient norm")
    texts = _svg_texts(svg)
    assert "default (the model's own)" in texts
    assert "kaiming_normal (recommended)" in texts
    assert "normal:1.0 - non-finite" in texts
    assert "stroke-width: 2.8" in svg  # the default scheme's thick line
    loss = _svg_texts(_page_chart(page, "Training loss"))
    assert "normal:1.0 - non-finite, off scale" in loss
    deadsat = _svg_texts(_page_chart(page, "Dead and saturated"))
    assert "dead units" in deadsat and "saturated units" not in deadsat
    assert "net.12" in deadsat


@pytest.mark.parametrize("evil", ["<b>&'\"$\\alpha$\x00", " ".join(EVIL)])
def test_chart_labels_are_escaped(evil):
    # Charts are slow to draw, so a short label (shown whole) and one with every nasty string
    # (shortened in the chart) instead of hypothesis examples; the template layer has the
    # property test above.
    scheme = SchemeResult(name=evil, verdict="healthy",
                          layers=[LayerStats(name=evil, type="Linear", depth=0, grad_norm=1.0,
                                             act_std=1.0, dead_fraction=0.2)],
                          loss=[1.0, 0.5])
    svgs = [charts.dead_saturated_chart([scheme])]
    if len(evil) < 20:
        svgs.append(charts.grad_norm_chart([scheme]))
    for svg in svgs:
        assert "<script" not in svg and "<b>" not in svg
        assert "\x00" not in svg and "\x1b" not in svg
        root = ET.fromstring(svg)  # well-formed XML: nothing broke out of a text node
        assert {e.tag.split("}")[1] for e in root.iter()} <= SVG_TAGS | {"clipPath"}
        if len(evil) < 20:
            assert "&lt;b&gt;&amp;" in svg
            assert strip_controls(evil) in _svg_texts(svg)  # mathtext off: dollars stay text


# --------------------------------------------------------------------------- JUnit


def _parse_xml(text: str) -> ET.Element:
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>\n')
    return ET.fromstring(text.encode("utf-8"))


def test_junit_shape():
    gate = gate_result()
    root = _parse_xml(junit.junit_xml(gate.checks, timestamp="T", hostname="H", time=1.5))
    assert root.tag == "testsuites"
    (suite,) = root
    assert suite.attrib == {"name": "audit", "errors": "0", "failures": "3", "skipped": "1",
                            "tests": "6", "time": "1.500", "timestamp": "T", "hostname": "H"}
    cases = suite.findall("testcase")
    assert [c.get("classname") for c in cases[:2]] == ["audit.determinism"] * 2
    assert cases[0].get("name") == "runs agree" and cases[0].get("time") == "0"
    failure = cases[0].find("failure")
    assert failure.get("message").startswith("The runs first part at step 3")
    assert "Where: models/encoder.py:41" in failure.text
    assert "torch.use_deterministic_algorithms(True)" in failure.text
    assert cases[3].find("skipped").get("message") == "no CUDA device"
    assert cases[2].find("failure") is None and cases[2].find("skipped") is None


def test_junit_defaults_fill_timestamp_and_host():
    suite = _parse_xml(junit.junit_xml([], suite="mine"))[0]
    assert suite.get("name") == "mine" and suite.get("tests") == "0"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$", suite.get("timestamp"))
    assert suite.get("hostname")


@settings(max_examples=80, deadline=None)
@given(user_text, user_text, user_text, user_text)
def test_junit_escapes_and_round_trips(name, message, fix, audit):
    check = Check(audit=audit, name=name, passed=False, message=message, fix=fix,
                  where="a.py:3")
    skipped = Check(audit=audit, name=name, passed=True, skipped=True, message=message)
    root = _parse_xml(junit.junit_xml([check, skipped], suite=name))
    suite = root[0]
    assert suite.get("name") == junit.xml_text(name)
    case, case2 = suite.findall("testcase")
    assert case.get("name") == junit.xml_text(name)
    assert case.get("classname") == junit.xml_text(f"audit.{audit}")
    failure = case.find("failure")
    assert failure.text == junit.failure_text(check)
    assert junit.xml_text(message.replace("\r", "\n")).strip().split("\n")[0][:100] in \
        failure.get("message") or not message.strip()
    assert case2.find("skipped") is not None


def test_junit_xml_text():
    assert junit.xml_text("a\x00b\x1bc\ud800d\ufffe\r\ne\rf\tg") == "abcd\ne\nf\tg"
    assert junit.xml_text("ok ✓ 模块 😀") == "ok ✓ 模块 😀"


# --------------------------------------------------------------------------- markdown


def test_markdown_escapes_table_cells():
    check = Check(audit="determinism", name="a | b", passed=False,
                  message="x | y <script>alert(1)</script>\n# not a heading *bold*",
                  fix="```\ncode\n```", where="we|ird.py:3")
    md = markdown.summary_markdown(GateResult(checks=[check]))
    row = next(line for line in md.splitlines() if line.startswith("| ❌"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 5
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "\\# not a heading \\*bold\\*" in md
    assert "````python\n```\ncode\n```\n````" in md


@settings(max_examples=60, deadline=None)
@given(user_text, user_text)
def test_markdown_table_cannot_be_broken(name, message):
    check = Check(audit="init", name=name, passed=False, message=message, fix=message,
                  where=name)
    md = markdown.summary_markdown(GateResult(checks=[check, check]))
    rows = [line for line in md.splitlines() if line.startswith("| ❌")]
    assert len(rows) == 2
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 5
    prose = re.sub(r"(`{3,})python\n.*?\n\1(?=\n)", "", md, flags=re.S)  # fixes are code
    prose = prose.replace("\\`", "")  # an escaped backtick opens no code span
    prose = re.sub(r"`[^`\n]*`", "", prose)  # and so are places
    assert re.findall(r"<[^>]*>", prose.replace("<br>", "")) == []


def test_markdown_stays_under_github_limit():
    big = "é" * 15_000
    checks = [Check(audit="init", name=f"check {i}", passed=False, message=big, fix=big,
                    where=f"f.py:{i}") for i in range(200)]
    md = markdown.summary_markdown(GateResult(checks=checks,
                                              reports={"init": "init.html"}))
    assert len(md.encode("utf-8")) <= markdown.DEFAULT_MAX_BYTES < 1024 * 1024
    assert "summary truncated" in md and md.rstrip().endswith("[init.html](init.html)")
    assert md.count("```") % 2 == 0
    tiny = markdown.summary_markdown(GateResult(checks=checks), max_bytes=2000)
    assert len(tiny.encode("utf-8")) <= 2000 and "summary truncated" in tiny


def test_markdown_all_passed():
    md = markdown.summary_markdown(GateResult(checks=[Check("init", "x", True)]))
    assert md.startswith("## ✅ audit check: all 1 checks passed")


# --------------------------------------------------------------------------- GitHub


@given(st.text())
def test_github_escaping_round_trips(s):
    data, prop = github.escape_data(s), github.escape_property(s)
    assert github.unescape_data(data) == s
    assert github.unescape_property(prop) == s
    assert "\n" not in data and "\r" not in data
    assert not set(":,\n\r") & set(prop)


def _parse_command(line: str) -> tuple[str, dict, str]:
    assert "\n" not in line and "\r" not in line
    match = re.match(r"::(\w+) ([^:]*)::(.*)$", line, re.S)
    assert match, line
    props = dict(part.split("=", 1) for part in match.group(2).split(","))
    return match.group(1), {k: github.unescape_property(v) for k, v in props.items()}, \
        github.unescape_data(match.group(3))


@settings(max_examples=80, deadline=None)
@given(path=user_text.filter(lambda p: ":" not in p and strip_controls(p)),
       line=st.integers(1, 10**6), name=user_text, message=user_text, fix=user_text)
def test_github_annotation_cannot_inject(path, line, name, message, fix):
    check = Check(audit="determinism", name=name, passed=False, message=message, fix=fix,
                  where=f"{path}:{line}")
    (command,) = github.annotations([check])
    kind, props, body = _parse_command(command)
    assert kind == "error"
    assert props["file"] == strip_controls(path) and props["line"] == str(line)
    assert props["title"] == strip_controls(f"audit determinism: {name}")
    assert body.startswith(strip_controls(message).strip() or f"{strip_controls(name)} failed")


def test_github_annotations_select_failed_checks_with_where():
    checks = [Check("determinism", "a", False, "m", where="train.py:12"),
              Check("determinism", "b", False, "m", where="train.py"),
              Check("determinism", "c", False, "m"),
              Check("determinism", "d", True, "m", where="x.py:1"),
              Check("determinism", "e", False, "m", where="x.py:1", skipped=True),
              Check("init", "f", False, "m", where="C:\\work\\t.py:7:3")]
    lines = github.annotations(checks)
    assert lines == [
        "::error file=train.py,line=12,title=audit determinism%3A a::m",
        "::error file=train.py,title=audit determinism%3A b::m",
        "::error file=C%3A\\work\\t.py,line=7,col=3,title=audit init%3A f::m",
    ]


def test_split_where():
    assert split_where("a.py:12") == ("a.py", 12, None)
    assert split_where("a.py") == ("a.py", None, None)
    assert split_where("C:\\a.py:3") == ("C:\\a.py", 3, None)
    assert split_where("a.py:3:9") == ("a.py", 3, 9)
    assert split_where(None) == (None, None, None)


def test_fmt_num():
    assert [fmt_num(v) for v in (None, 0.0, 5.96e-08, 0.5, 2.3026, float("nan"),
                                 float("-inf"), 3, 1e7)] == \
        ["n/a", "0", "5.96e-08", "0.5", "2.3", "nan", "-inf", "3", "1.00e+07"]


# --------------------------------------------------------------------------- the model


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe_float = st.none() | finite_floats
plain_text = st.text(max_size=20)
json_values = st.none() | st.booleans() | st.integers(-10**9, 10**9) | finite_floats | plain_text

determinism_results = st.builds(
    DeterminismResult,
    verdict=st.sampled_from(["deterministic", "nondeterministic"]),
    runs=st.integers(1, 8), steps=st.integers(0, 100), seed=st.integers(0, 2**31),
    device=st.sampled_from(["cpu", "cuda", "cuda:1"]),
    environment=st.dictionaries(plain_text, json_values, max_size=4),
    first_divergence=st.none() | st.builds(
        Divergence, step=st.none() | st.integers(0, 100),
        stage=st.sampled_from(["init", "data", "rng", "forward", "backward", "optimizer"]),
        module=st.none() | plain_text, tensor=st.none() | plain_text, max_abs_diff=maybe_float),
    causes=st.lists(st.builds(Cause, source=st.sampled_from(["unseeded_rng", "unknown"]),
                              confirmed=st.booleans(), evidence=plain_text, fix=plain_text,
                              where=st.none() | plain_text), max_size=3),
    target=plain_text, mode=st.sampled_from(["target", "script"]),
    run_info=st.lists(st.builds(RunInfo, index=st.integers(0, 8), steps_completed=st.integers(0, 9),
                                status=st.sampled_from(["ok", "crashed"]), message=plain_text,
                                exit_code=st.none() | st.integers(-9, 9),
                                seconds=maybe_float), max_size=3),
    timeline=st.lists(st.builds(StepAgreement, step=st.none() | st.integers(0, 50),
                                stages=st.dictionaries(st.sampled_from(["data", "rng"]),
                                                       st.sampled_from(["agree", "differ"]))),
                      max_size=4),
    growth=st.lists(st.builds(GrowthPoint, step=st.integers(0, 50), max_abs_diff=maybe_float,
                              rel_l2=maybe_float), max_size=4),
    rng_escapes=st.lists(st.builds(RngEscape, kind=plain_text, where=st.none() | plain_text,
                                   count=st.integers(1, 9), detail=plain_text), max_size=2),
    knob_trials=st.lists(st.builds(KnobTrial, knob=plain_text, source=plain_text,
                                   removed=st.booleans(), steps=st.integers(0, 9),
                                   detail=plain_text), max_size=2),
    detail=st.dictionaries(plain_text, json_values, max_size=3),
    error=st.none() | plain_text, seconds=maybe_float,
)

init_results = st.builds(
    InitResult,
    verdict=st.sampled_from(["healthy", "unhealthy"]), recommended=st.none() | plain_text,
    schemes=st.lists(st.builds(
        SchemeResult, name=plain_text, verdict=st.sampled_from(["healthy", "unhealthy"]),
        layers=st.lists(st.builds(LayerStats, name=plain_text, type=plain_text,
                                  depth=st.integers(0, 50), grad_norm=maybe_float,
                                  act_std=maybe_float, dead_fraction=maybe_float,
                                  nonfinite=st.booleans()), max_size=3),
        findings=st.lists(st.builds(Finding, kind=plain_text, layer=st.none() | plain_text,
                                    value=maybe_float, threshold=maybe_float,
                                    message=plain_text), max_size=2),
        loss=st.lists(st.none() | finite_floats, max_size=4), score=maybe_float,
        error=st.none() | plain_text), max_size=3),
    target=plain_text, steps=st.integers(0, 20), environment=st.dictionaries(
        plain_text, json_values, max_size=3),
    thresholds=st.dictionaries(plain_text, finite_floats, max_size=3),
    recommendation_code=plain_text, error=st.none() | plain_text,
)


@settings(max_examples=30, deadline=None)
@given(determinism_results)
def test_json_round_trip_determinism(result):
    text = json_report.dumps(result)
    back = DeterminismResult.from_dict(_strict_loads(text))
    assert back == result
    assert json_report.dumps(back) == text


@settings(max_examples=30, deadline=None)
@given(init_results)
def test_json_round_trip_init(result):
    text = json_report.dumps(result)
    back = InitResult.from_dict(_strict_loads(text))
    assert back == result


@settings(max_examples=30, deadline=None)
@given(init_results, st.lists(st.floats(), max_size=4))
def test_json_never_writes_nan(result, floats):
    if result.schemes:
        result.schemes[0].loss = floats
        result.schemes[0].score = float("nan")
    data = _strict_loads(json_report.dumps(result))
    if result.schemes:
        assert data["schemes"][0]["loss"] == [f if math.isfinite(f) else None for f in floats]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(determinism_results, init_results)
def test_every_reporter_renders_arbitrary_results(det, ini):
    # Terminal and HTML (charts off here; they have their own tests) never fail on odd data.
    terminal.determinism_summary(det, "r.html", color=True, width=50)
    terminal.init_summary(ini, "r.html", width=50)
    _assert_safe(html.determinism_html(det, charts=False), "")
    _assert_safe(html.init_html(ini, charts=False), "")
