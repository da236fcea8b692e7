"""Reporters of ``audit variance`` / ``audit compare`` on hand-built results: gold files for
the wording, structure and safety asserted here."""
import json

from test_reports import compare_gold

from audit.probes.results.variance import (CompareResult, MetricVariance, Routing, RunRecord,
                                           SourceStats, VarianceResult)
from audit.probes.variance.compare import compare_samples
from audit.reports import html, json_report, terminal

EVIL = "evil<script>alert(1)</script>\x1b[31m.py:build"


def _stats(values, share, seeds=None):
    import numpy as np

    v = np.asarray(values)
    q1, q3 = np.percentile(v, [25, 75])
    std = float(v.std(ddof=1))
    return SourceStats(values=list(values), seeds=seeds or list(range(len(values))),
                       mean=float(v.mean()), std=std, min=float(v.min()), max=float(v.max()),
                       q1=float(q1), q3=float(q3), iqr=float(q3 - q1),
                       std_ci=[0.5 * std, 1.5 * std], share=share)


def variance_result() -> VarianceResult:
    base = [1.20, 1.25, 1.18, 1.31]
    sources = {
        "init": _stats(base, 0.62), "data": _stats([1.20, 1.22, 1.19, 1.23], 0.08),
        "augment": _stats([1.20, 1.21, 1.20, 1.22], 0.04), "dropout": _stats([1.2] * 4, 0.0),
        "all": _stats([1.20, 1.29, 1.16, 1.33], 1.0),
    }
    sources["init"].values, sources["init"].seeds, sources["init"].excluded = base[:3], [0, 1, 2], 1
    return VarianceResult(
        seeds=4, steps=20, seed=0, target=EVIL, device="cpu",
        sources=["init", "data", "augment", "dropout"],
        metrics={"loss": MetricVariance("lower", sources)},
        routing=[Routing("init", "seeded before build"),
                 Routing("data", "not reachable: the MySampler", separable=False, note="give it a generator"),
                 Routing("augment", "global generators while fetching"),
                 Routing("dropout", "global generators while training")],
        controlled=True, control_spread=0.0, dominant={"loss": "init"},
        runs=[RunRecord("init", 3, "crashed", message="ValueError: <boom>", where="train.py:3")],
        environment={"torch": "2.x"}, seconds=12.5,
        error="1 of 20 runs crashed and were left out of the statistics; first: init seed 3: "
              "ValueError: <boom> (at train.py:3)")


def compare_result(verdict="better") -> CompareResult:
    a = [0.50, 0.52, 0.49, 0.55, 0.51, 0.53]
    wobble = [0.01, -0.012, 0.004, -0.002, 0.006, -0.003]
    b = [x - 0.04 for x in a] if verdict == "better" else [x + d for x, d in zip(a, wobble)]
    res = compare_samples(a, b, "lower")
    res.metric, res.steps, res.paired_seeds = "val_loss", 30, list(range(6))
    res.a.target, res.b.target = "train.py:build,lr=0.01", EVIL
    res.runs = [RunRecord("b", 6, "nonfinite", message="a metric is not finite: val_loss=nan")]
    res.seeds = 7
    return res


def test_gold_variance(tmp_path):
    result = variance_result()
    compare_gold("variance.txt", terminal.variance_summary(result, "out/variance.html"), tmp_path)
    compare_gold("variance.html", html.variance_html(result), tmp_path)
    compare_gold("variance.json", json_report.dumps(result), tmp_path)


def test_gold_compare(tmp_path):
    better, same = compare_result("better"), compare_result("no_difference")
    assert better.verdict == "better" and same.verdict == "no_difference"
    compare_gold("compare_better.txt", terminal.compare_summary(better, "out/compare.html"), tmp_path)
    compare_gold("compare_no_difference.txt", terminal.compare_summary(same), tmp_path)
    compare_gold("compare.html", html.compare_html(better), tmp_path)
    compare_gold("compare.json", json_report.dumps(better), tmp_path)


def test_json_documents_carry_the_contract_fields_first():
    v = json.loads(json_report.dumps(variance_result()))
    assert list(v)[:4] == ["schema", "seeds", "steps", "metrics"] and v["schema"] == "audit.variance/1"
    assert set(v["metrics"]["loss"]["sources"]) == {"init", "data", "augment", "dropout", "all"}
    assert {"values", "mean", "std"} <= set(v["metrics"]["loss"]["sources"]["all"])
    c = json.loads(json_report.dumps(compare_result()))
    assert list(c)[:12] == ["schema", "seeds", "metric", "direction", "verdict", "a", "b", "deltas",
                            "ci", "p_value", "prob_improvement", "seeds_needed"]
    assert c["schema"] == "audit.compare/1" and "values" in c["a"]


def test_user_strings_are_escaped_in_html_and_stripped_in_the_terminal():
    for page in (html.variance_html(variance_result(), charts=False),
                 html.compare_html(compare_result(), charts=False)):
        assert "<script>" not in page and "&lt;script&gt;" in page and "\x1b" not in page
    for text in (terminal.variance_summary(variance_result()), terminal.compare_summary(compare_result())):
        assert "\x1b" not in text


def test_pages_have_a_chart_per_source_and_variant():
    page = html.variance_html(variance_result())
    assert page.count("<svg") == 1 and 'aria-label="loss per seed, per source"' in page
    page = html.compare_html(compare_result())
    assert page.count("<svg") == 2 and "Paired differences" in page
