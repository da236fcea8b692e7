"""audit diff without training: module matching (hypothesis), trace translation, the
reference file's refusals, diff.json's shape and round trip, the reporters (gold files,
escaping). Everything here is pure Python and fast."""
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from audit.probes.run import compare
from audit.probes.diff import measure, reference, traces
from audit.probes.diff.match import match
from audit.probes.errors import UsageError
from audit.probes.results import BUILTIN_LABEL, BUILTIN_TARGET, GrowthPoint, StepAgreement
from audit.probes.results.diff import (DiffResult, DiffSide, Difference, EnvironmentChange,
                                       LossCurves, Rename, Replaced, SelfDifference, Unmatched)
from audit.reports import files, html, json_report, terminal
from audit.reports.common import diff_sentence, environment_reason

GOLD = Path(__file__).parent / "gold"
UPDATE_GOLD = os.environ.get("AUDIT_UPDATE_GOLD", "") not in ("", "0")

# --------------------------------------------------------------------------- matching

LAYERS = [("Linear", [[16, 8], [16]]), ("ReLU", []), ("Flatten", []), ("Conv2d", [[4, 3, 3, 3], [4]]),
          ("BatchNorm2d", [[4], [4]]), ("Dropout", []), ("GELU", []), ("Linear", [[3, 16]])]


def header(leaves, names=None, container="body"):
    """A params header of a model: root, one container, and the given leaves inside it."""
    names = [f"{container}.{n}" for n in (names or range(len(leaves)))]
    modules, types, params, shapes = ["", container], ["Net", "Sequential"], [], []
    for name, (kind, own) in zip(names, leaves):
        modules.append(name)
        types.append(kind)
        for pname, shape in zip(("weight", "bias"), own):
            params.append(f"{name}.{pname}")
            shapes.append(shape)
    return {"type": "params", "names": params, "modules": modules, "types": types, "shapes": shapes}


leaves_st = st.lists(st.sampled_from(LAYERS), min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(leaves_st, st.text("abcdefgh", min_size=1, max_size=6))
def test_a_renamed_model_matches_every_module(leaves, prefix):
    a = header(leaves)
    b = header(leaves, [f"{prefix}_{i}x" for i in range(len(leaves))], container="trunk")
    m = match(a, b)
    assert m.unmatched_a == [] and m.unmatched_b == [] and m.replaced == []
    assert len(m.params) == len(a["names"])
    assert dict(m.renamed) == {k: v for k, v in m.modules.items() if k != v}
    assert m.modules["body"] == "trunk"


@settings(max_examples=80, deadline=None)
@given(leaves_st, st.data())
def test_dropping_a_parameter_free_module_loses_only_it(leaves, data):
    free = [i for i, (_, own) in enumerate(leaves) if not own]
    if not free:
        leaves = leaves + [("Flatten", [])]
        free = [len(leaves) - 1]
    drop = data.draw(st.sampled_from(free))
    assume(len(leaves) > 1)  # an emptied container would be a leaf itself
    a = header(leaves)
    b = header(leaves[:drop] + leaves[drop + 1:])
    m = match(a, b)
    assert len(m.params) == len(a["names"]) == len(b["names"])
    assert m.unmatched_b == [] and len(m.unmatched_a) == 1  # identical neighbours are interchangeable
    assert leaves[int(m.unmatched_a[0].split(".")[1])][0] == leaves[drop][0]


def test_a_swapped_activation_pairs_by_position_and_says_so():
    leaves = [LAYERS[0], ("ReLU", []), LAYERS[7]]
    m = match(header(leaves), header([LAYERS[0], ("GELU", []), LAYERS[7]]))
    assert m.replaced == [("body.1", "body.1", "ReLU", "GELU")]
    assert m.unmatched_a == m.unmatched_b == []


def test_a_resized_layer_has_no_partner():
    m = match(header([LAYERS[0], ("Linear", [[3, 16], [3]])]), header([LAYERS[0], ("Linear", [[5, 16], [5]])]))
    assert "body.1" in m.unmatched_a and "body.1" in m.unmatched_b
    assert m.params_a == ["body.1.weight", "body.1.bias"]


def test_translation_puts_side_a_into_side_b_names():
    a = header([LAYERS[0], LAYERS[1]])
    b = header([LAYERS[0], LAYERS[1]], ["lin", "act"], container="trunk")
    m = match(a, b)
    records = [a, {"type": "init", "params": ["p0", "p1"]},
               {"type": "step", "step": 0, "params": ["q0", "q1"], "grads": ["g0", "g1"],
                "optim": "o", "modules": [["body.0", 0, "out", "f"], ["CrossEntropyLoss", 0, "out", "l"]]}]
    out = traces.translate(records, m, b)
    assert out[0]["names"] == ["trunk.lin.weight", "trunk.lin.bias"]
    assert out[2]["modules"] == [["trunk.lin", 0, "out", "f"], ["CrossEntropyLoss", 0, "out", "l"]]
    assert "optim" not in traces.plain(out)[2]
    same = [b, {"type": "init", "params": ["p0", "p1"]},
            {"type": "step", "step": 0, "params": ["q0", "q1"], "grads": ["g0", "g1"]}]
    assert compare.first_parting(traces.plain(out), same) is None


def test_a_parameter_only_side_a_has_parts_the_sides_at_init():
    a = header([LAYERS[0], LAYERS[7]])
    b = header([LAYERS[0]])
    m = match(a, b)
    init_a = {"type": "init", "params": ["p0", "p1", "p2"]}
    out = traces.translate([a, init_a], m, b)
    parting = compare.first_parting(out, [b, {"type": "init", "params": ["p0", "p1"]}])
    assert parting is not None and parting.stage == "init"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=1, max_size=12), st.floats(-1e-3, 1e-3))
def test_loss_curves_measure_the_largest_relative_difference(a, eps):
    b = [x * (1 + eps) for x in a]
    curves = measure.loss_curves(a, b)
    assert curves.max_rel_diff == pytest.approx(abs(eps) / (1 + max(eps, 0)), rel=1e-6, abs=1e-12)
    assert measure.drift(curves, []) == ("material" if curves.max_rel_diff > 1e-4 else "rounding")


def test_environment_changes_name_the_keys_that_moved(monkeypatch):
    """As a run records them (probes.run.knobs.describe_run): the thread count and the thread
    variables included; a key one side lacks counts as None there."""
    from audit.probes.run.knobs import describe_run as environment

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    a = environment("cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MKL_NUM_THREADS")
    b = {**environment("cpu"), "torch": "9.9.9", "threads": a["threads"] + 1}
    b["flags"] = {**b["flags"], "num_threads": a["threads"] + 1}
    changes = measure.environment_changes(a, b)
    assert [(c.key, c.a, c.b) for c in changes] == [
        ("torch", a["torch"], "9.9.9"), ("threads", a["threads"], a["threads"] + 1),
        ("flags.MKL_NUM_THREADS", "1", None), ("flags.OMP_NUM_THREADS", "1", "2")]
    assert measure.environment_changes(a, dict(a)) == []


_values = st.one_of(st.none(), st.integers(0, 3), st.sampled_from(["1", "2", "cpu"]))
_envs = st.dictionaries(st.sampled_from(["python", "torch", "threads", "cpu", "zeta", "alpha"]), _values)


@given(_envs, _envs, st.dictionaries(st.sampled_from(["A", "B", "num_threads"]), _values),
       st.dictionaries(st.sampled_from(["A", "B", "num_threads"]), _values))
def test_environment_changes_list_every_differing_key_once(a, b, flags_a, flags_b):
    a, b = {**a, "flags": flags_a}, {**b, "flags": flags_b}
    changes = measure.environment_changes(a, b)
    keys = [c.key for c in changes]
    expected = {k for k in set(a) | set(b) if k != "flags" and a.get(k) != b.get(k)}
    expected |= {f"flags.{k}" for k in set(flags_a) | set(flags_b)
                 if k != "num_threads" and flags_a.get(k) != flags_b.get(k)}
    assert set(keys) == expected and len(keys) == len(set(keys))
    known = [k for k in keys if k in ("python", "torch", "cpu", "threads")]
    assert keys[:len(known)] == known  # the known keys first, in their order
    assert measure.environment_changes(a, a) == []


def test_the_environment_is_the_likely_reason_only_for_the_same_code():
    r = sample("environment")
    assert (r.same_code, r.likely_reason) == (True, "environment")
    assert environment_reason(r) and environment_reason(r) in diff_sentence(r)
    r.b.code = "other"
    assert (r.same_code, r.likely_reason, environment_reason(r)) == (False, None, "")
    r.b.code = None  # an older reference: not known, so not claimed
    assert (r.same_code, r.likely_reason) == (None, None)
    r = sample("environment")
    r.b.target += ",lr=0.1"  # the same files, called otherwise
    assert (r.same_code, r.likely_reason) == (False, None)
    for verdict in ("identical", "nondeterministic"):
        r = sample(verdict)
        r.a.code = r.b.code = "same"
        r.b.target = r.a.target
        assert r.likely_reason is None


# --------------------------------------------------------------------------- the reference file


def _ref():
    return reference.Reference(target="t.py:build", steps=2, seed=0, device="cpu",
                               records=[{"type": "init", "params": ["01"]}], losses=[1.0, 0.5])


def test_a_reference_round_trips(tmp_path):
    path = tmp_path / "ref.audit"
    size = reference.save(_ref(), str(path))
    assert size == path.stat().st_size
    back = reference.load(str(path))
    assert back == _ref()


@pytest.mark.parametrize("content, words", [
    (None, "no such reference file"),
    ("{\"schema\": \"audit.reference/1\", \"steps\"", "not JSON"),
    ("\x00\xff garbage", "not JSON"),
    (json.dumps({"schema": "audit.determinism/1", "verdict": "deterministic"}), "not an audit reference"),
    (json.dumps([1, 2, 3]), "not an audit reference"),
    (json.dumps({"schema": "audit.reference/2", "records": []}), "newer audit"),
    (json.dumps({"schema": "audit.reference/1", "target": "x"}), "damaged reference"),
])
def test_a_bad_reference_is_one_line(tmp_path, content, words):
    path = tmp_path / "ref.audit"
    if content is not None:
        path.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(UsageError) as info:
        reference.load(str(path))
    message = str(info.value)
    assert words in message and "\n" not in message and str(path) in message


# --------------------------------------------------------------------------- diff.json


def sample(verdict="differs") -> DiffResult:
    env_a = {"python": "3.11.9", "torch": "2.4.1", "numpy": "1.26.4", "device": "cpu"}
    env_b = {**env_a, "torch": "2.5.0"}
    r = DiffResult(
        verdict=verdict, steps=4, seed=0, a=DiffSide("train.py:build", env_a),
        b=DiffSide("train.py:build,after=True", env_b),
        environment_changes=[EnvironmentChange("torch", "2.4.1", "2.5.0")],
        renamed=[Rename("5", "hidden"), Rename("head<script>", "classifier")],
        loss=LossCurves(a=[2.3, 2.1, 1.9, 1.8], b=[2.3, 2.1, 1.9000001, 1.8000003],
                        max_rel_diff=1.7e-7, step_of_max=3),
        replaced=[Replaced("act", "act", "ReLU", "GELU")], unmatched=Unmatched(a=["flatten"], b=[]),
        timeline=[StepAgreement(None, {"init": "agree"})] + [
            StepAgreement(i, {s: ("differ" if i >= 2 and s in ("forward", "loss", "backward", "optimizer") else "agree")
                              for s in ("data", "rng", "forward", "loss", "backward", "optimizer")})
            for i in range(4)],
        growth=[GrowthPoint(2, 1e-8, 1e-9), GrowthPoint(3, 3e-8, 4e-9)], seconds=3.2)
    if verdict == "identical":
        r.environment_changes, r.timeline, r.growth = [], r.timeline[:1], []
        r.loss = LossCurves(a=r.loss.a, b=list(r.loss.a), max_rel_diff=0.0)
        return r
    r.first_difference = Difference(step=2, stage="forward", module="hidden", tensor=None,
                                    max_abs_diff=1.2e-7, module_a="5")
    r.drift = "rounding"
    if verdict == "nondeterministic":
        r.self_difference = SelfDifference(side="b", step=1, stage="forward")
    if verdict == "environment":  # the same code, another environment: the numbers moved
        r.verdict, r.renamed, r.replaced, r.unmatched = "differs", [], [], Unmatched()
        r.first_difference = Difference(step=0, stage="backward", module="hidden",
                                        tensor="hidden.weight", max_abs_diff=2.4e-7)
        r.a = DiffSide("train.py:build", {**env_a, "threads": 1, "flags": {"OMP_NUM_THREADS": "1"}},
                       "reference", code="4f2a9c1d")
        r.b = DiffSide("train.py:build", {**env_a, "threads": 2, "flags": {"OMP_NUM_THREADS": "2"}},
                       code="4f2a9c1d")
        r.mode = "against"
        r.environment_changes = measure.environment_changes(r.a.environment, r.b.environment)
    return r


def test_diff_json_follows_the_contract():
    data = json.loads(json_report.dumps(sample()))
    assert list(data)[:10] == ["schema", "verdict", "steps", "seed", "a", "b", "environment_changes",
                               "first_difference", "renamed", "loss"]
    assert data["schema"] == "audit.diff/1"
    assert set(data["first_difference"]) >= {"step", "stage", "module", "tensor", "max_abs_diff"}
    assert data["renamed"][0] == {"from": "5", "to": "hidden"}
    assert set(data["loss"]) >= {"a", "b", "max_rel_diff"}
    assert data["environment_changes"] == [{"key": "torch", "a": "2.4.1", "b": "2.5.0"}]
    assert set(data["a"]) >= {"target", "environment"}


@pytest.mark.parametrize("verdict", ["identical", "differs", "nondeterministic", "environment"])
def test_diff_json_round_trips(verdict):
    r = sample(verdict)
    assert DiffResult.from_dict(json.loads(json_report.dumps(r))).to_dict() == r.to_dict()


# --------------------------------------------------------------------------- reports


def compare_gold(name: str, actual: str, tmp_path: Path) -> None:
    actual = re.sub(r"<svg\b.*?</svg>\n?", "<svg><!-- chart masked --></svg>\n", actual, flags=re.S)
    path = GOLD / name
    if UPDATE_GOLD:
        files.write_atomic(path, actual)
        return
    if not path.exists():
        pytest.fail(f"no gold file {path}; create it with AUDIT_UPDATE_GOLD=1")
    if actual != path.read_text(encoding="utf-8"):
        (tmp_path / name).write_text(actual, encoding="utf-8")
        pytest.fail(f"{name} differs from its gold file; the output is in {tmp_path / name}")


@pytest.mark.parametrize("verdict", ["identical", "differs", "nondeterministic", "environment"])
def test_reports_match_their_gold_files(verdict, tmp_path):
    r = sample(verdict)
    compare_gold(f"diff_{verdict}.txt", terminal.diff_summary(r, "audit-report/diff.html"), tmp_path)
    compare_gold(f"diff_{verdict}.json", json_report.dumps(r), tmp_path)
    compare_gold(f"diff_{verdict}.html", html.diff_html(r, charts=False), tmp_path)


def test_a_side_without_a_target_is_named_as_the_built_in_example():
    from audit.kinds.base import Settings

    r = sample("identical")
    r.a = DiffSide("", r.a.environment)
    side_a = next(line for line in terminal.diff_summary(r).splitlines() if BUILTIN_LABEL in line)
    assert r.b.target not in side_a and BUILTIN_LABEL.startswith(BUILTIN_TARGET)
    assert Settings().target_label == BUILTIN_LABEL


def test_the_html_page_draws_both_loss_curves_and_marks_the_first_difference():
    page = html.diff_html(sample("differs"))
    assert page.count("<svg") == 2  # loss curves and parameter growth
    assert 'class="differ first"' in page or "first\"" in page
    assert "head&lt;script&gt;" in page and "head<script>" not in page


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_user_strings_never_reach_the_page_unescaped(text):
    name = "<zq" + text  # a tag no page has: it can only come from the user's string
    r = sample("differs")
    r.b.target = name
    r.first_difference.module = name
    r.renamed = [Rename(name, name + "x")]
    page = html.diff_html(r, charts=False)
    assert "<script" not in page.lower() or "<script" not in name.lower()
    assert "<zq" not in page


def test_record_summary_says_what_it_refused():
    from audit.probes.results.diff import RecordResult

    ok = RecordResult("recorded", "t.py:build", 20, 0, "cpu", size_bytes=2048, path="ref.audit")
    assert "ref.audit" in terminal.record_summary(ok)
    bad = RecordResult("nondeterministic", "t.py:build", 20, 0, "cpu",
                       self_difference=SelfDifference("a", 3, "forward"))
    text = terminal.record_summary(bad)
    assert "step 3" in text and "audit determinism" in text
