"""The CI gate: checks, baselines, report files and ``audit check`` driven as a CI job would.

The end-to-end tests build a small project in a temporary folder (a ``pyproject.toml`` with
``[tool.audit]`` and a ``targets.py``), chdir into it and call ``audit.cli.main``. The
determinism runs are kept tiny (2 runs x 2 steps, no attribution): each is a fresh process.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import textwrap
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import gate, registry
from audit.kinds import init as init_kind
from audit.cli import main
from audit.probes.errors import UsageError
from audit.probes.results import (STAGES, Cause, Check, DeterminismResult, Divergence, Finding,
                            InitResult, KnobTrial, LayerStats, RngEscape, RunInfo,
                            SchemeResult, StepAgreement)
from audit.reports.github import unescape_data, unescape_property

GITHUB_VARS = ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No CI variables leak in from the machine running the tests; never the repo's config."""
    for name in GITHUB_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- synthetic results


def det(verdict="deterministic", *, stage=None, step=0, causes=(), escapes=(), runs=None,
        error=None, trials=(), max_abs_diff=1e-6):
    steps = 3
    timeline = [StepAgreement(None, {"init": "agree"})]
    for i in range(steps):
        timeline.append(StepAgreement(i, {s: "agree" for s in STAGES[1:]}))
    div = None
    if stage is not None:
        div = Divergence(step=None if stage == "init" else step, stage=stage, module="net.0",
                         max_abs_diff=max_abs_diff)
        row = timeline[0] if stage == "init" else timeline[step + 1]
        row.stages[stage] = "differ"
    return DeterminismResult(
        verdict=verdict, runs=2, steps=steps, seed=0, device="cpu", target="targets.py:build",
        run_info=runs or [RunInfo(0, steps, "ok"), RunInfo(1, steps, "ok")], timeline=timeline,
        first_divergence=div, causes=list(causes), rng_escapes=list(escapes), error=error,
        knob_trials=list(trials))


def layer(name, depth, grad=1.0, act=1.0, dead=0.0, sat=0.0):
    return LayerStats(name=name, type="Linear", depth=depth, grad_norm=grad, weight_norm=1.0,
                      act_mean=0.0, act_std=act, dead_fraction=dead, saturated_fraction=sat,
                      weight_layer=True)


def init(findings=(), layers=None, recommended="kaiming_normal", rec_healthy=True, error=None):
    layers = layers or [layer(f"net.{i}", i) for i in range(4)]
    default = SchemeResult("default", "unhealthy" if findings else "healthy", layers=layers,
                           findings=list(findings), loss=[2.3, 2.2], score=1.0)
    other = SchemeResult("kaiming_normal", "healthy" if rec_healthy else "unhealthy",
                         layers=[layer(f"net.{i}", i) for i in range(4)], loss=[2.3, 2.0],
                         findings=[] if rec_healthy else [Finding("dead_units", "net.1", 0.9, 0.5, "dead")],
                         score=0.5)
    return InitResult(verdict=default.verdict, recommended=recommended, schemes=[default, other],
                      steps=2, recommendation_code="nn.init.kaiming_normal_(net[0].weight)",
                      recommendation_reason="lowest loss", error=error)


VANISHING = Finding("vanishing_gradients", "net.0", 1e-9, 1e-5, "the gradient shrinks 30x per layer.")


def names(checks):
    return [(c.name, c.passed, c.skipped) for c in checks]


# --------------------------------------------------------------------------- checks


def test_deterministic_result_passes_every_check():
    checks = gate.checks_for("determinism", det())
    assert names(checks) == [("runs completed", True, False), ("runs agree", True, False),
                             ("no unseeded generators", True, False),
                             ("finite loss and gradients", True, False),
                             ("no latent sources", True, False)]


def test_an_unseeded_generator_drawn_while_the_runs_agree_is_a_latent_source_not_a_failure():
    from audit.probes.determinism import latent

    escape = RngEscape("numpy.random.default_rng()", "train.py:12", 1, "seeded from the OS")
    found = latent.sources({}, [escape], "cpu", jittered=False)
    assert [(s.source, s.where) for s in found] == [("unseeded_rng", "train.py:12")]
    assert found[0].fix.startswith("rng = np.random.default_rng(seed)")
    result = det(escapes=[escape])
    result.latent_sources = found
    checks = {c.name: c for c in gate.checks_for("determinism", result)}
    assert checks["runs agree"].passed and checks["no unseeded generators"].passed
    warned = checks["no latent sources"]
    assert warned.passed and warned.where == "train.py:12"
    assert not registry.get("determinism").failing(result)
    assert gate.failed_check_lines(registry.get("determinism"), result, None) == []
    result.latent_level = "fail"
    checks = {c.name: c for c in gate.checks_for("determinism", result)}
    assert not checks["no latent sources"].passed and checks["no unseeded generators"].passed
    # the headline says PASS (the runs agree), so the verdict line and the summary say which
    # check failed: never PASS with exit status 1 and no word why
    line = gate.verdict_line("determinism", result, None)
    assert line.startswith("audit determinism: FAIL") and "no latent sources" in line
    lines = gate.failed_check_lines(registry.get("determinism"), result, None)
    assert len(lines) == 2 and "no latent sources" in lines[1] and "train.py:12" in lines[1]


@pytest.mark.parametrize("use", ["unused", "reseeded"])
def test_an_unseeded_generator_never_drawn_from_fails_nothing(use):
    from audit.probes.determinism import latent

    escape = RngEscape("numpy.random.SeedSequence()", "train.py:12", 1, "seeded from the OS",
                       use=use, made_by="lib.envs.VectorEnv")
    for verdict, stage in (("deterministic", None), ("nondeterministic", "data")):
        result = det(verdict, stage=stage, escapes=[escape])
        result.latent_level = "fail"
        result.latent_sources = latent.sources({}, [e for e in [escape] if e.drawn], "cpu", False)
        checks = {c.name: c for c in gate.checks_for("determinism", result)}
        assert checks["no unseeded generators"].passed, verdict
        assert checks["no latent sources"].passed and not result.latent_sources
        assert gate.snapshot("determinism", result)["rng_escapes"] == []
    assert gate.failed_check_lines(registry.get("determinism"), det(escapes=[escape]), None) == []


def test_a_library_made_generator_drawn_from_names_the_call_and_a_fix_at_the_users_object():
    from audit.probes.determinism.attribute import generator_fix

    held = RngEscape("numpy.random.SeedSequence()", "train.py:21", 1, "seeded from the OS",
                     made_by="gym.vector.SyncVectorEnv", holder="envs.single_action_space")
    assert generator_fix(held).startswith("envs.single_action_space.seed(seed)")
    loose = RngEscape("numpy.random.SeedSequence()", "train.py:21", 1, "seeded from the OS",
                      made_by="gym.vector.SyncVectorEnv")
    assert "gym.vector.SyncVectorEnv" in generator_fix(loose)
    assert "train.py:21" in generator_fix(loose)
    assert "SeedSequence(seed)" not in generator_fix(loose)  # not a fix the user can apply
    result = det("nondeterministic", stage="data", escapes=[held],
                 trials=[KnobTrial("seed_escapes", "unseeded_rng", False, 2)])
    gen = {c.name: c for c in gate.checks_for("determinism", result)}["no unseeded generators"]
    assert not gen.passed and gen.where == "train.py:21"
    assert gen.fix == generator_fix(held) and "gym.vector.SyncVectorEnv" in gen.message


def test_nondeterministic_result_has_one_check_per_cause_source():
    causes = [
        Cause("nondeterministic_algorithm", True, "atomics in net.0", "torch.use_deterministic_algorithms(True)",
              "model.py:40"),
        Cause("unseeded_rng", False, "torch.seed() at a.py:3 is clock-seeded", "torch.manual_seed(seed)", "a.py:3"),
        Cause("unknown", False, "no knob", "look", None),
    ]
    result = det("nondeterministic", stage="backward", step=1, causes=causes,
                 escapes=[RngEscape("torch.seed()", "a.py:3")],
                 trials=[KnobTrial("seed_escapes", "unseeded_rng", False, 2)])
    checks = {c.name: c for c in gate.checks_for("determinism", result)}
    assert list(checks) == ["runs completed", "runs agree", "no unseeded generators",
                            "finite loss and gradients", "no latent sources",
                            "cause: nondeterministic_algorithm", "cause: unknown"]
    agree = checks["runs agree"]
    assert not agree.passed and "step 1" in agree.message
    assert agree.fix == "torch.use_deterministic_algorithms(True)" and agree.where == "model.py:40"
    kernel = checks["cause: nondeterministic_algorithm"]
    assert not kernel.passed and kernel.where == "model.py:40" and "(confirmed)" in kernel.message
    assert "did not remove the divergence" in checks["no unseeded generators"].message


def test_a_crashed_run_fails_runs_completed_with_its_place():
    runs = [RunInfo(0, 1, "crashed", "ValueError: boom (at train.py:33)", 4), RunInfo(1, 3, "ok")]
    result = det(runs=runs, error="run 0 crashed after 1 steps: ValueError: boom (at train.py:33)")
    checks = {c.name: c for c in gate.checks_for("determinism", result)}
    assert not checks["runs completed"].passed and checks["runs completed"].where == "train.py:33"
    assert checks["runs agree"].skipped


def test_init_checks_healthy_and_unhealthy():
    ok = gate.checks_for("init", init(recommended="default"))
    assert [c.name for c in ok] == ["default init healthy"] + [n for _, n in init_kind.FINDING_CHECKS] \
        + ["recommended scheme healthy"]
    assert all(c.passed for c in ok)

    bad = {c.name: c for c in gate.checks_for("init", init([VANISHING]))}
    assert not bad["default init healthy"].passed
    assert bad["default init healthy"].fix == "nn.init.kaiming_normal_(net[0].weight)"
    vanishing = bad["no vanishing gradients"]
    assert not vanishing.passed
    from audit.reports.common import fmt_num

    assert (f"net.0 (value {fmt_num(1e-9)}, threshold {fmt_num(1e-5)}): the gradient shrinks "
            "30x per layer. What to do:") in vanishing.message
    assert "What to do:" in vanishing.message and "kaiming_normal" in vanishing.fix
    assert bad["no dead units"].passed and bad["recommended scheme healthy"].passed

    none_good = {c.name: c for c in gate.checks_for("init", init([VANISHING], rec_healthy=False))}
    assert not none_good["recommended scheme healthy"].passed


def test_verdict_lines():
    line = gate.verdict_line("determinism", det(), "out/determinism.html")
    assert line.startswith("audit determinism: PASS Deterministic") and line.endswith(
        "-- report: out/determinism.html")
    bad = det("nondeterministic", stage="data", causes=[Cause("dataloader", True, "e", "f", "l.py:2")])
    line = gate.verdict_line("determinism", bad, None)
    assert "FAIL" in line and "step 0" in line and "cause: dataloader at l.py:2" in line
    line = gate.verdict_line("init", init([VANISHING]), "r.html")
    assert "FAIL" in line and "vanishing_gradients" in line and "recommended: kaiming_normal" in line
    assert "\n" not in line


# --------------------------------------------------------------------------- baselines (unit)


def regressions(audit, base, now, **tol):
    return [t for t, _ in gate.regressions(audit, gate.snapshot(audit, base), gate.snapshot(audit, now),
                                           {**registry.get(audit).tolerances, **tol})]


def test_determinism_regressions():
    assert regressions("determinism", det(), det()) == []
    found = regressions("determinism", det(), det("nondeterministic", stage="data"))
    assert len(found) == 1 and found[0].startswith("the runs no longer agree: they part at step 0")
    backward = det("nondeterministic", stage="backward", causes=[Cause("nondeterministic_algorithm", True, "", "")])
    assert regressions("determinism", backward, backward) == []
    data = det("nondeterministic", stage="data", causes=[Cause("nondeterministic_algorithm", True, "", ""),
                                                         Cause("dataloader", True, "", "")])
    found = regressions("determinism", backward, data)
    assert "newly nondeterministic stage: data" in found
    assert "new cause of nondeterminism: dataloader" in found
    grown = det("nondeterministic", stage="backward", max_abs_diff=1e-3,
                causes=[Cause("nondeterministic_algorithm", True, "", "")])
    assert any(r.startswith("the divergence grew") for r in regressions("determinism", backward, grown))
    assert regressions("determinism", backward, grown, max_abs_diff=1e4) == []
    # Better is never a regression.
    assert regressions("determinism", data, det()) == []


def test_escape_places_compare_per_kind_and_file():
    one = det(escapes=[RngEscape("random.Random()", "a.py:10")])
    moved = det(escapes=[RngEscape("random.Random()", "a.py:14")])
    assert regressions("determinism", one, moved) == []
    two = det(escapes=[RngEscape("random.Random()", "a.py:10"), RngEscape("random.Random()", "a.py:30")])
    assert regressions("determinism", one, two) == ["new unseeded generator: random.Random() at a.py:30"]
    other = det(escapes=[RngEscape("random.Random()", "a.py:10"), RngEscape("torch.seed()", "b.py:1")])
    assert regressions("determinism", one, other) == ["new unseeded generator: torch.seed() at b.py:1"]


def test_init_regressions_with_tolerances():
    base = init()
    assert regressions("init", base, init()) == []
    # net.0's gradient falls 100x below the median layer's: 2 decades, tolerance 1.
    worse = init(layers=[layer("net.0", 0, grad=0.01), layer("net.1", 1), layer("net.2", 2), layer("net.3", 3)])
    found = regressions("init", base, worse)
    assert len(found) == 1 and found[0].startswith("net.0: gradient norm 0.01 is 2.0 decades")
    assert regressions("init", base, worse, grad_norm=2.5) == []
    # 3x smaller activations: 0.48 decades, under the 0.5 default.
    assert regressions("init", base, init(layers=[layer("net.0", 0, act=0.33)] +
                                          [layer(f"net.{i}", i) for i in (1, 2, 3)])) == []
    dead = init(layers=[layer("net.0", 0, dead=0.4)] + [layer(f"net.{i}", i) for i in (1, 2, 3)])
    assert regressions("init", base, dead) == ["net.0: dead units 40%, 0% in the baseline (tolerance 0.1)"]
    unhealthy = init([VANISHING])
    found = regressions("init", base, unhealthy)
    assert "the model's own init became unhealthy" in found
    assert "new finding: vanishing_gradients at net.0" in found
    assert regressions("init", unhealthy, unhealthy) == []
    assert regressions("init", unhealthy, base) == []


def test_baseline_file_is_sorted_readable_json(tmp_path):
    path = str(tmp_path / "base.json")
    assert gate.apply_baseline("init", init([VANISHING]), path, True, {"grad_norm": 2.0}).texts == []
    text = open(path, encoding="utf-8").read()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert data["schema"] == "audit.baseline/1"
    assert data["init"]["tolerances"] == {"act_std": 0.5, "dead_fraction": 0.1, "grad_norm": 2.0,
                                          "saturated_fraction": 0.1}
    assert data["init"]["failing_checks"] == ["default init healthy", "no vanishing gradients"]
    # The other audit's snapshot is kept when one is updated.
    gate.apply_baseline("determinism", det(), path, True, None)
    data = json.load(open(path, encoding="utf-8"))
    assert set(data) == {"schema", "init", "determinism"}
    # Tolerances edited in the file count; the config's win over the file's.
    data["init"]["tolerances"]["grad_norm"] = 0.1
    open(path, "w", encoding="utf-8").write(json.dumps(data))
    worse = init([VANISHING], layers=[layer("net.0", 0, grad=0.3)] + [layer(f"net.{i}", i) for i in (1, 2, 3)])
    assert len(gate.apply_baseline("init", worse, path, False, None).texts) == 1
    assert gate.apply_baseline("init", worse, path, False, {"grad_norm": 1.0}).texts == []


def test_missing_baseline_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="run with --update-baseline"):
        gate.apply_baseline("init", init(), str(tmp_path / "none.json"), False, None)
    assert gate.apply_baseline("init", init(), None, False, None) is None
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(UsageError, match="cannot be read"):
        gate.apply_baseline("init", init(), str(tmp_path / "bad.json"), False, None)


def test_write_reports_marks_accepted_failures_and_lists_regressions(tmp_path):
    base = str(tmp_path / "b.json")
    gate.apply_baseline("init", init([VANISHING]), base, True, None)
    result = init([VANISHING, Finding("dead_units", "net.2", 0.8, 0.5, "dead")])
    state = gate.apply_baseline("init", result, base, False, None)
    assert state.texts == ["new finding: dead_units at net.2"]
    paths = gate.write_reports(str(tmp_path / "out"), "init", result, junit_path=str(tmp_path / "j.xml"),
                               state=state)
    assert set(paths) == {"json", "html", "summary", "junit"}
    cases = {c.get("name"): c for c in ET.parse(paths["junit"]).getroot().iter("testcase")}
    assert cases["default init healthy"].find("skipped") is not None
    assert "accepted by the baseline" in cases["default init healthy"].find("skipped").get("message")
    assert cases["no dead units"].find("failure") is not None
    failure = cases[gate.REGRESSION_CHECK].find("failure")
    assert "new finding: dead_units at net.2" in failure.text
    assert "--update-baseline" in failure.text
    summary = open(paths["summary"], encoding="utf-8").read()
    assert "Regressions against the baseline" in summary
    assert "1 regression" in gate.verdict_line("init", result, None, state)


# --------------------------------------------------------------------------- GitHub


def test_annotations_one_per_place_relative_to_the_workspace(tmp_path, monkeypatch, capsys):
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    result = det("nondeterministic", stage="data",
                 escapes=[RngEscape("random.Random()", "data.py:5"),
                          RngEscape("numpy.random.default_rng()", "aug.py:9")])
    gate.write_reports("out", "determinism", result)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("::")]
    assert len(lines) == 2
    assert lines[0].startswith("::error file=src/data.py,line=5,title=audit determinism%3A "
                               "no unseeded generators::random.Random() is not seeded")
    assert lines[1].startswith("::error file=src/aug.py,line=9,")
    assert "%0A%0AFix:%0Arng = np.random.default_rng(seed)" in lines[1]


def test_no_annotations_outside_github_actions(capsys):
    gate.write_reports("out", "determinism", det("nondeterministic", stage="data",
                                                 escapes=[RngEscape("random.Random()", "d.py:5")]))
    assert "::error" not in capsys.readouterr().out


SAFE_PATH = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_ .,:%/-]{0,20}\.py", fullmatch=True)


def _parse_annotation(line: str) -> tuple[dict, str]:
    assert line.startswith("::error ")
    props, _, data = line[len("::error "):].partition("::")
    fields = dict(item.split("=", 1) for item in props.split(","))
    return {k: unescape_property(v) for k, v in fields.items()}, unescape_data(data)


@settings(max_examples=100, deadline=None)
@given(path=SAFE_PATH, line=st.integers(1, 10**6), name=st.text(max_size=30),
       message=st.text(min_size=1, max_size=80), fix=st.text(max_size=40))
def test_annotation_escaping_round_trips(path, line, name, message, fix):
    from audit.reports.common import strip_controls

    check = Check("determinism", name, False, message, fix, f"{path}:{line}")
    out = io.StringIO()
    env = {"GITHUB_ACTIONS": "true"}
    with _env(env), contextlib.redirect_stdout(out):
        gate.print_annotations([check], {})
    printed = out.getvalue()
    assert printed.count("\n") == 1  # one command, whatever the text holds
    props, data = _parse_annotation(printed.rstrip("\n"))
    assert props["file"] == path and props["line"] == str(line)
    assert props["title"] == strip_controls(f"audit determinism: {name}")
    expected = strip_controls(message).strip() or strip_controls(f"{name} failed")
    assert data.startswith(expected)
    if fix:
        assert data.endswith(strip_controls(fix).strip("\n"))


@contextlib.contextmanager
def _env(values: dict):
    saved = {k: os.environ.get(k) for k in GITHUB_VARS}
    for k in GITHUB_VARS:
        os.environ.pop(k, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_step_summary_stays_under_the_cap(tmp_path, monkeypatch):
    summary = tmp_path / "step.md"
    cap = 1024 * 1024
    summary.write_bytes(b"x" * (cap - 40 * 1024))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    huge = det("nondeterministic", stage="data",
               escapes=[RngEscape(f"random.Random() #{i} " + "y" * 200, f"f{i}.py:{i + 1}")
                        for i in range(3000)])
    gate.write_reports("out", "determinism", huge)
    size = summary.stat().st_size
    assert cap - 40 * 1024 < size <= cap
    assert open("out/summary.md", encoding="utf-8").read().startswith("## ❌ audit check")


def test_nearly_full_step_summary_is_left_alone(tmp_path, monkeypatch, capsys):
    summary = tmp_path / "step.md"
    summary.write_bytes(b"x" * (1024 * 1024 - 8 * 1024))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    gate.write_reports("out", "init", init())
    assert summary.stat().st_size == 1024 * 1024 - 8 * 1024
    assert "nearly full" in capsys.readouterr().err
    assert os.path.isfile("out/summary.md")


# --------------------------------------------------------------------------- end to end

TARGETS = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn


    def _batches(gen, width, n=3):
        return [(torch.randn(16, width, generator=gen), torch.randint(0, 3, (16,), generator=gen))
                for _ in range(n)]


    def good():
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        return {"model": model, "data": _batches(torch.Generator().manual_seed(0), 8)}


    def _sigmoid_mlp():
        layers = []
        for _ in range(12):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        return nn.Sequential(*layers, nn.Linear(32, 3))


    def deep_sigmoid():
        return {"model": _sigmoid_mlp(), "data": _batches(torch.Generator().manual_seed(0), 32)}


    def bad():
        rng = np.random.default_rng()  # ESCAPE
        data = [(torch.tensor(rng.standard_normal((16, 32)), dtype=torch.float32),
                 torch.tensor(rng.integers(0, 3, 16))) for _ in range(3)]
        return {"model": _sigmoid_mlp(), "data": data}
''')
ESCAPE_LINE = TARGETS.splitlines().index(
    next(l for l in TARGETS.splitlines() if "# ESCAPE" in l)) + 1

DETERMINISM_FAST = "[tool.audit.determinism]\nruns = 2\nsteps = 2\njobs = 2\nattribution = false\n"
INIT_FAST = '[tool.audit.init]\nsteps = 2\nschemes = "default,kaiming_normal"\n'


def make_project(folder, target: str, audits=("determinism", "init"), extra: str = "") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets.py").write_text(TARGETS, encoding="utf-8")
    text = (f'[project]\nname = "demo"\n\n[tool.audit]\ntarget = "targets.py:{target}"\n'
            f"audits = {json.dumps(list(audits))}\n{extra}\n{DETERMINISM_FAST}\n{INIT_FAST}")
    (folder / "pyproject.toml").write_text(text, encoding="utf-8")
    return str(folder)


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def junit_cases(path) -> dict:
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    cases = {}
    for case in suite.iter("testcase"):
        state = "failed" if case.find("failure") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        cases[(case.get("classname"), case.get("name"))] = (state, case)
    return suite, cases


def test_check_passes_on_a_healthy_deterministic_project(tmp_path, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path / "proj", "good"))
    code, out, err = run_cli("check", "--junit-xml", "reports/junit.xml")
    assert code == 0, out + err
    assert "audit check  PASS  all 15 checks passed" in out
    suite, cases = junit_cases("reports/junit.xml")
    assert suite.get("tests") == "15" and suite.get("failures") == "0"
    assert cases[("audit.determinism", "runs agree")][0] == "passed"
    assert cases[("audit.init", "default init healthy")][0] == "passed"
    files = sorted(os.listdir("audit-report"))
    assert files == ["determinism.html", "determinism.json", "index.html", "init.html",
                     "init.json", "summary.md"]
    index = open("audit-report/index.html", encoding="utf-8").read()
    assert 'href="determinism.html"' in index and 'href="init.html"' in index
    assert json.load(open("audit-report/determinism.json"))["verdict"] == "deterministic"
    assert "✅ audit check: all 15 checks passed" in open("audit-report/summary.md", encoding="utf-8").read()


@pytest.fixture(scope="module")
def failing_ci_run(tmp_path_factory):
    """One ``audit check`` of a nondeterministic, badly initialized target, inside a fake
    GitHub Actions job (shared by the tests below: it spawns four training processes)."""
    root = tmp_path_factory.mktemp("ci")
    project = make_project(root / "proj", "bad")
    step_summary = root / "step_summary.md"
    step_summary.write_text("# earlier step\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step_summary),
           "GITHUB_WORKSPACE": project}
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with _env(env):
            code, out, err = run_cli("check", "--out", "ci-out", "--junit-xml", "ci-out/junit.xml")
    finally:
        os.chdir(cwd)
    return {"code": code, "out": out, "err": err, "project": project, "step_summary": step_summary}


def test_failing_check_exit_status_and_terminal(failing_ci_run):
    run = failing_ci_run
    assert run["code"] == 1, run["out"] + run["err"]
    assert "audit check  FAIL" in run["out"]
    assert "FAIL  determinism  runs agree" in run["out"]
    assert "FAIL  init         default init healthy" in run["out"]


def test_failing_check_junit(failing_ci_run):
    suite, cases = junit_cases(os.path.join(failing_ci_run["project"], "ci-out", "junit.xml"))
    failed = {name for name, (state, _) in cases.items() if state == "failed"}
    assert {("audit.determinism", "runs agree"), ("audit.determinism", "no unseeded generators"),
            ("audit.init", "default init healthy"), ("audit.init", "no vanishing gradients")} <= failed
    assert ("audit.determinism", "runs completed") not in failed
    assert int(suite.get("failures")) == len(failed)
    generators = cases[("audit.determinism", "no unseeded generators")][1].find("failure")
    assert "numpy.random.default_rng()" in generators.get("message")
    assert f"Where: targets.py:{ESCAPE_LINE}" in generators.text
    assert "Fix:\nrng = np.random.default_rng(seed)" in generators.text
    vanishing = cases[("audit.init", "no vanishing gradients")][1].find("failure")
    assert "What to do:" in vanishing.text


def test_failing_check_summary_and_step_summary(failing_ci_run):
    summary = open(os.path.join(failing_ci_run["project"], "ci-out", "summary.md"),
                   encoding="utf-8").read()
    assert summary.startswith("## ❌ audit check:")
    assert "### ❌ determinism: no unseeded generators" in summary
    assert "```python\nrng = np.random.default_rng(seed)" in summary
    assert "| ❌ | init | default init healthy |" in summary
    step = failing_ci_run["step_summary"].read_text(encoding="utf-8")
    assert step == "# earlier step\n" + summary


def test_failing_check_github_annotations(failing_ci_run):
    lines = [l for l in failing_ci_run["out"].splitlines() if l.startswith("::error ")]
    parsed = [_parse_annotation(line) for line in lines]
    at_escape = [(p, d) for p, d in parsed
                 if p["file"] == "targets.py" and p["line"] == str(ESCAPE_LINE)]
    assert len(at_escape) == 1, failing_ci_run["out"]  # one annotation per place
    props, data = at_escape[0]
    assert props["title"] == "audit determinism: no unseeded generators"
    assert "numpy.random.default_rng()" in data and "Fix:\nrng = np.random.default_rng(seed)" in data


def test_failing_check_index_links_reports(failing_ci_run):
    index = open(os.path.join(failing_ci_run["project"], "ci-out", "index.html"), encoding="utf-8").read()
    assert 'href="determinism.html"' in index and 'href="init.html"' in index
    assert "What to fix" in index


def test_exit_zero_reports_but_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path / "proj", "deep_sigmoid", audits=["init"]))
    code, out, _ = run_cli("check", "--exit-zero", "--junit-xml", "j.xml")
    assert code == 0 and "audit check  FAIL" in out
    suite, _ = junit_cases("j.xml")
    assert int(suite.get("failures")) >= 2


def test_quiet_prints_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path / "proj", "deep_sigmoid", audits=["init"]))
    code, out, _ = run_cli("check", "--quiet")
    assert code == 1
    assert out.count("\n") == 1 and out.startswith("audit check: FAIL ")
    assert "init: default init healthy" in out and "audit-report/index.html" in out


@pytest.mark.parametrize("command", ["check", "init", "determinism"])
def test_broken_config_exits_2_naming_the_key(tmp_path, monkeypatch, command):
    make_project(tmp_path / "proj", "good")
    with open(tmp_path / "proj" / "pyproject.toml", "a", encoding="utf-8") as fh:
        fh.write("[tool.audit.init.thresholds]\nvanishing_grads = 1e-4\n")
    monkeypatch.chdir(tmp_path / "proj")
    code, out, err = run_cli(command)
    assert code == 2
    assert err.strip() == err.strip().splitlines()[0]  # one line
    assert err.startswith("pyproject.toml: [tool.audit.init.thresholds] unknown key "
                          "'vanishing_grads'; expected one of: ")
    assert "Traceback" not in err + out


def test_wrong_type_in_config_exits_2(tmp_path, monkeypatch):
    make_project(tmp_path / "proj", "good", extra='seed = "zero"')
    monkeypatch.chdir(tmp_path / "proj" )
    code, _, err = run_cli("check")
    assert code == 2
    assert err.strip() == "pyproject.toml: [tool.audit] seed must be an integer from 0 to " \
                          "4294967295, got 'zero' (a string)"


def test_target_that_cannot_load_exits_2(tmp_path, monkeypatch):
    make_project(tmp_path / "proj", "good", audits=["init"])
    monkeypatch.chdir(tmp_path / "proj")
    text = open("pyproject.toml", encoding="utf-8").read().replace("targets.py:good", "missing.py:build")
    open("pyproject.toml", "w", encoding="utf-8").write(text)
    code, _, err = run_cli("check")
    assert code == 2
    assert "missing.py" in err and "does not exist" in err and "Traceback" not in err


def test_config_from_a_subfolder_resolves_the_target(tmp_path, monkeypatch):
    make_project(tmp_path / "proj", "good", audits=["init"], extra='out = "gate"')
    (tmp_path / "proj" / "docs").mkdir()
    monkeypatch.chdir(tmp_path / "proj" / "docs")
    code, out, err = run_cli("check", "--quiet")
    assert code == 0, out + err
    assert os.path.isfile(tmp_path / "proj" / "gate" / "index.html")


def test_baseline_workflow(tmp_path, monkeypatch):
    project = make_project(tmp_path / "proj", "deep_sigmoid", audits=["init"])
    monkeypatch.chdir(project)

    # No baseline yet: a usage error that says what to do, before any training.
    code, _, err = run_cli("check", "--baseline", "audit-baseline.json")
    assert code == 2 and "run with --update-baseline" in err

    # Record the known-bad state: passes, and the file is sorted, readable JSON.
    code, out, err = run_cli("check", "--baseline", "audit-baseline.json", "--update-baseline")
    assert code == 0, out + err
    text = open("audit-baseline.json", encoding="utf-8").read()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert "default init healthy" in data["init"]["failing_checks"]
    assert data["init"]["tolerances"]["grad_norm"] == 1.0

    # Same code again: the known failures are accepted, nothing regressed.
    code, out, err = run_cli("check", "--baseline", "audit-baseline.json", "--junit-xml", "j.xml")
    assert code == 0, out + err
    _, cases = junit_cases("j.xml")
    assert cases[("audit.init", "default init healthy")][0] == "skipped"
    assert cases[("audit.init", gate.REGRESSION_CHECK)][0] == "passed"

    # The config names the baseline; a healthy model is an improvement, not a regression.
    text = open("pyproject.toml", encoding="utf-8").read()
    text = text.replace('audits = ["init"]', 'audits = ["init"]\nbaseline = "audit-baseline.json"')
    open("pyproject.toml", "w", encoding="utf-8").write(text.replace(":deep_sigmoid", ":good"))
    code, out, err = run_cli("check")
    assert code == 0, out + err

    # Accept the healthy state, then break it: a regression fails the gate.
    assert run_cli("check", "--update-baseline")[0] == 0
    text = open("pyproject.toml", encoding="utf-8").read()
    open("pyproject.toml", "w", encoding="utf-8").write(text.replace(":good", ":deep_sigmoid"))
    code, out, err = run_cli("check", "--junit-xml", "j.xml")
    assert code == 1, out + err
    assert "Regressions against the baseline" in out
    assert "init: the model's own init became unhealthy" in out
    _, cases = junit_cases("j.xml")
    state, case = cases[("audit.init", gate.REGRESSION_CHECK)]
    assert state == "failed" and "new finding: vanishing_gradients" in case.find("failure").text
    summary = open("audit-report/summary.md", encoding="utf-8").read()
    assert "### Regressions against the baseline" in summary


def test_single_audit_command_with_a_baseline(tmp_path, monkeypatch):
    monkeypatch.chdir(make_project(tmp_path / "proj", "deep_sigmoid", audits=["init"]))
    assert run_cli("init", "--steps", "2", "--schemes", "default", "--baseline", "b.json")[0] == 2
    code, out, err = run_cli("init", "--steps", "2", "--schemes", "default", "--baseline", "b.json",
                             "--update-baseline")
    assert code == 0, out + err
    code, out, err = run_cli("init", "--steps", "2", "--schemes", "default", "--baseline", "b.json",
                             "--quiet")
    assert code == 0, out + err
    assert "no regressions against the baseline" in out


def test_an_interrupted_check_writes_what_was_measured(tmp_path, monkeypatch):
    from audit.gate import run as gate_run
    from audit.probes.run.processes import Interrupted
    import signal

    partial = init(error="interrupted by SIGTERM while scheme lsuv")

    def run_kind(kind, s, quiet=False):
        if kind.name == "init":
            exc = Interrupted(signal.SIGTERM)
            exc.partial = partial
            raise exc
        return det()

    monkeypatch.setattr(gate_run, "run_kind", run_kind)
    kinds = [registry.get("determinism"), registry.get("init")]
    out = str(tmp_path / "rep")
    with pytest.raises(Interrupted) as caught:
        gate_run.check_all(kinds, {k.name: None for k in kinds}, out, gate.GateOptions(), None)
    assert caught.value.report == os.path.join(out, "index.html")
    assert sorted(os.listdir(out)) == ["determinism.html", "determinism.json", "index.html",
                                       "init.html", "init.json"]
    assert json.load(open(os.path.join(out, "init.json")))["error"].startswith("interrupted")
