"""The resume reporters: gold files for the terminal summary, the HTML page and the JSON
document of sample results (diverges with causes, equivalent, nondeterministic, incomplete),
and a property: user strings never reach the HTML unescaped. Regenerate after an intended
change with ``AUDIT_UPDATE_GOLD=1`` (see ``tests/gold/README.md``)."""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.probes.results import Cause, Divergence, KnobTrial, RunInfo
from audit.probes.results.resume import (ResumeDivergence, ResumeResult, ResumeStep,
                                         StateDifference)
from audit.reports import files, html, json_report, terminal
from audit.reports.common import strip_controls
from markupsafe import escape

GOLD = Path(__file__).parent / "gold"
UPDATE_GOLD = os.environ.get("AUDIT_UPDATE_GOLD", "") not in ("", "0")
ENV = {"python": "3.12.3", "torch": "2.5.1", "device": "cpu"}


def _timeline(at, steps, differ_from=None, state="agree"):
    rows = []
    for step in range(max(0, at - 2), steps):
        if step < at:
            stages = {s: "before" for s in ("data", "rng", "forward", "backward", "optimizer")}
        else:
            bad = differ_from is not None and step >= differ_from
            stages = {s: "differ" if bad and s != "data" else "agree"
                      for s in ("data", "rng", "forward", "backward", "optimizer")}
        if step == at:
            stages = {"state": state, **stages}
        rows.append(ResumeStep(step, stages, 1.0 - 0.01 * step, None if step < at else 1.0 - 0.011 * step))
    return rows


def diverges_result() -> ResumeResult:
    return ResumeResult(
        verdict="diverges", steps=10, at=6, seed=0, device="cpu", environment=ENV,
        target="train.py:build", checkpoint="target", epoch_length=4, auto=True,
        first_divergence=ResumeDivergence(step=6, stage="rng"),
        causes=[Cause(source="rng_state", confirmed=True,
                      evidence="The resumed run parts from the uninterrupted one at step 6, "
                               "stage rng. With torch's RNG state restored by the tool, it "
                               "matched the uninterrupted run through step 9.",
                      fix="# save\ncheckpoint[\"torch_rng\"] = torch.get_rng_state()\n"
                          "# load\ntorch.set_rng_state(checkpoint[\"torch_rng\"])",
                      where="train.py:30")],
        timeline=_timeline(6, 10, differ_from=6),
        knob_trials=[KnobTrial("torch_rng", "rng_state", True, 10)],
        run_info=[RunInfo(i, n, "ok", exit_code=0, seconds=1.5) for i, n in enumerate((10, 4))],
        detail={"rng_streams": ["torch_cpu"]}, seconds=7.5)


def equivalent_result() -> ResumeResult:
    return ResumeResult(verdict="equivalent", steps=10, at=6, seed=0, environment=ENV,
                        target="train.py:build", checkpoint="target", epoch_length=4,
                        timeline=_timeline(6, 10), seconds=4.0)


def state_result() -> ResumeResult:
    return ResumeResult(
        verdict="diverges", steps=12, at=5, environment=ENV, target="<b>evil</b>.py:build",
        first_divergence=ResumeDivergence(step=5, stage="state", module="0",
                                          tensor="optimizer state of 0.weight"),
        state_differences=[StateDifference("optimizer state", "0.weight", "0"),
                           StateDifference("scheduler")],
        causes=[Cause("optimizer_state", True, "needed together", "optimizer.state_dict()", None),
                Cause("scheduler", True, "needed together", "scheduler.state_dict()", None)],
        timeline=_timeline(5, 12, differ_from=5, state="differ"))


def nondeterministic_result() -> ResumeResult:
    return ResumeResult(
        verdict="nondeterministic", steps=10, at=6, environment=ENV, target="train.py:build",
        uninterrupted=Divergence(step=0, stage="rng"),
        causes=[Cause("unknown", True, "Two uninterrupted runs already differ (at step 0, stage rng)",
                      "audit determinism TARGET", None)])


def error_result() -> ResumeResult:
    return ResumeResult(verdict="diverges", steps=10, at=6, target="train.py:build",
                        error="the resumed run (C) crashed: RuntimeError: boom (at train.py:12)")


SAMPLES = {"diverges": diverges_result, "equivalent": equivalent_result, "state": state_result,
           "nondeterministic": nondeterministic_result, "error": error_result}


def compare_gold(name: str, actual: str, tmp_path: Path) -> None:
    path = GOLD / name
    if UPDATE_GOLD:
        files.write_atomic(path, actual)
        return
    if not path.exists():
        pytest.fail(f"no gold file {path}; create it with AUDIT_UPDATE_GOLD=1")
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        (tmp_path / name).write_text(actual, encoding="utf-8")
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                                 f"gold/{name}", f"actual/{name}"))[:120])
        pytest.fail(f"{name} differs from its gold file (AUDIT_UPDATE_GOLD=1 accepts it):\n{diff}")


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_terminal_gold(kind, tmp_path):
    compare_gold(f"resume_{kind}.txt", terminal.resume_summary(SAMPLES[kind](), "out/resume.html"), tmp_path)


@pytest.mark.parametrize("kind", ["diverges", "state", "nondeterministic"])
def test_html_gold(kind, tmp_path):
    compare_gold(f"resume_{kind}.html", html.resume_html(SAMPLES[kind]()), tmp_path)


def test_json_gold_and_round_trip(tmp_path):
    result = diverges_result()
    text = json_report.dumps(result)
    compare_gold("resume_diverges.json", text, tmp_path)
    data = json.loads(text)
    assert ResumeResult.from_dict(data).to_dict() == data


def test_html_marks_the_first_divergence_and_the_resumed_step():
    page = html.resume_html(diverges_result())
    assert page.count('class="resumed"') == 1
    assert page.count(" first\"") == 1
    assert "step 6 · resumed" in page


@settings(max_examples=40, deadline=None)
@given(st.builds(lambda a, b, c: a + b + c, st.text(max_size=12), st.sampled_from(["<", "<script>", "&", '"']),
                 st.text(max_size=12)))
def test_user_strings_are_escaped(text):
    text = "Zq" + text
    r = state_result()
    r.target = text
    r.causes[0].evidence = text
    r.causes[0].fix = text
    r.first_divergence.tensor = text
    r.state_differences = [StateDifference("buffer", text, text)]
    page = html.resume_html(r)
    clean = strip_controls(text)
    if any(ch in clean for ch in '<>"'):
        assert clean not in page
    assert str(escape(clean)) in page
