"""End to end: planted pairs (tests/targets/diff_pairs.py) through ``audit record`` and
``audit diff``, in fresh processes. To stay cheap, the base is recorded once and every variant
is compared against that reference (one run, two when it differs); one pair runs as
``diff A B`` (the lockstep replay and its magnitudes under renamed modules), and script mode
records, refuses a nondeterministic script and compares a renamed one. All of it runs once per
session, two at a time."""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit.probes.diff import reference
from audit.probes.diff.engine import DiffOptions, diff, diff_against, record
from audit.probes.errors import UsageError

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = os.path.join(HERE, "targets", "diff_pairs.py") + ":build"
SCRIPT = os.path.join(HERE, "scripts", "diff_train.py")
STEPS = 5
VARIANTS = ("base", "rename", "helper", "activation", "dropout", "reinit", "optimizer",
            "scheduler", "shuffle", "late_transform", "loss", "noisy")
PAIRS = ("rename_reassoc",)
SCRIPTED = ("rename",)


def variant(name: str) -> str:
    return f"{TARGET},variant={name!r}"


def script(name: str) -> list:
    return ["python", SCRIPT, name, str(STEPS)]


def _record_and_save(opts: DiffOptions, path: str):
    result, ref = record(opts)
    if ref is not None:
        result.size_bytes = reference.save(ref, path)
    return result


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff")
    ref_path, script_ref_path = str(folder / "base.audit"), str(folder / "script.audit")
    with ThreadPoolExecutor(max_workers=2) as pool:
        recorded = pool.submit(_record_and_save, DiffOptions(target_a=variant("base"), steps=STEPS), ref_path)
        scripted = pool.submit(_record_and_save, DiffOptions(script_a=script("base"), steps=STEPS, cwd=HERE),
                               script_ref_path)
        noisy = pool.submit(_record_and_save, DiffOptions(script_a=script("noisy"), steps=1, cwd=HERE),
                            str(folder / "noisy.audit"))
        out = {"record": recorded.result(), "record_script": scripted.result(),
               "record_noisy": noisy.result(),
               "ref_path": ref_path, "script_ref_path": script_ref_path}
        ref, script_ref = reference.load(ref_path), reference.load(script_ref_path)
        jobs = {("against", v): pool.submit(diff_against, ref, DiffOptions(target_b=variant(v)))
                for v in VARIANTS}
        jobs.update({("pair", v): pool.submit(diff, DiffOptions(target_a=variant("base"),
                                                                target_b=variant(v), steps=STEPS))
                     for v in PAIRS})
        jobs.update({("script", v): pool.submit(diff_against, script_ref,
                                                DiffOptions(script_b=script(v), cwd=HERE))
                     for v in SCRIPTED})
        out.update({key: job.result() for key, job in jobs.items()})
    return out


def where(r):
    d = r.first_difference
    return None if d is None else (d.step, d.stage, d.module, d.tensor)


# --------------------------------------------------------------------------- record


def test_record_writes_a_small_reference_of_a_target_that_repeats_itself(runs):
    r = runs["record"]
    assert r.verdict == "recorded" and r.steps == STEPS and r.device == "cpu"
    assert 0 < r.size_bytes == os.path.getsize(runs["ref_path"])
    ref = reference.load(runs["ref_path"])
    assert len(ref.losses) == STEPS and ref.environment.get("torch")
    assert any(rec.get("modules") for rec in ref.records)  # module fingerprints per step


def test_record_refuses_a_script_that_disagrees_with_itself(runs):
    result = runs["record_noisy"]
    assert result.verdict == "nondeterministic" and result.size_bytes is None
    assert result.self_difference.step == 0 and result.self_difference.stage == "forward"


# --------------------------------------------------------------------------- identical


@pytest.mark.parametrize("name", ["base", "rename", "helper"])
def test_refactors_that_keep_every_number_are_identical(runs, name):
    r = runs[("against", name)]
    assert (r.verdict, r.first_difference, r.error) == ("identical", None, None)
    assert r.loss.max_rel_diff == 0.0 and r.loss.a == r.loss.b


def test_a_rename_lists_the_matched_pairs(runs):
    renamed = {x.source: x.to for x in runs[("against", "rename")].renamed}
    assert renamed["features.1"] == "embed" and renamed["head"] == "classifier"
    assert renamed["mix"] == "blocks.mix" and renamed["mix.a"] == "blocks.mix.a"


def test_a_dropped_flatten_is_listed_without_a_counterpart(runs):
    r = runs[("against", "helper")]
    assert r.unmatched.a == ["features.0"] and r.unmatched.b == []
    assert {x.source: x.to for x in r.renamed} == {"features.1": "features.0", "features.2": "features.1"}


# --------------------------------------------------------------------------- differs

EXPECTED = {  # variant -> (step, stage, module, tensor) with side b's names
    "activation": (0, "forward", "features.2", None),
    "dropout": (0, "forward", "drop", None),
    "reinit": (None, "init", "head", "head.weight"),
    "optimizer": (0, "optimizer", "features.1", "features.1.weight"),
    "scheduler": (3, "optimizer", "features.1", "features.1.weight"),
    "shuffle": (0, "data", None, "inputs"),
    "loss": (0, "loss", None, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_change_is_found_where_it_happens(runs, name):
    r = runs[("against", name)]
    assert r.verdict == "differs" and r.error is None
    assert where(r) == EXPECTED[name]


def test_a_late_data_transform_parts_the_sides_only_at_a_later_batch(runs):
    r = runs[("against", "late_transform")]
    d = r.first_difference
    assert r.verdict == "differs" and (d.stage, d.tensor) == ("data", "inputs") and d.step >= 1
    assert r.loss.a[: d.step] == r.loss.b[: d.step]


def test_a_swapped_activation_is_a_type_change_not_a_lost_module(runs):
    r = runs[("against", "activation")]
    assert [(x.b, x.a_type, x.b_type) for x in r.replaced] == [("features.2", "ReLU", "GELU")]
    assert r.unmatched.a == r.unmatched.b == []


def test_the_loss_stage_measures_the_loss_difference(runs):
    r = runs[("against", "loss")]
    d = r.first_difference
    assert d.max_abs_diff == pytest.approx(abs(r.loss.a[0] - r.loss.b[0]))
    assert r.drift == "material"


def test_a_nondeterministic_side_is_named(runs):
    r = runs[("against", "noisy")]
    assert r.verdict == "nondeterministic"
    assert r.self_difference.side == "b" and r.self_difference.step == 0


# --------------------------------------------------------------------------- diff A B


def test_a_pair_measures_a_reassociated_sum_at_rounding_level(runs):
    r = runs[("pair", "rename_reassoc")]
    d = r.first_difference
    assert (r.verdict, d.step, d.stage) == ("differs", 0, "forward")
    assert (d.module, d.module_a) == ("blocks.mix", "mix")  # side b's name, side a's beside it
    assert 0 < d.max_abs_diff < 1e-5  # lockstep tensors compared under side b's names
    assert r.drift == "rounding" and 0 <= r.loss.max_rel_diff < 1e-4  # the loss may round alike
    assert [g.step for g in r.growth] == list(range(STEPS)) and 0 < r.growth[-1].rel_l2 < 1e-4
    assert r.environment_changes == [] and len(r.renamed) == 9


# --------------------------------------------------------------------------- script mode


def test_script_mode_records_and_compares(runs):
    assert runs["record_script"].verdict == "recorded"
    r = runs[("script", "rename")]
    assert r.verdict == "identical" and r.error is None
    assert {x.to for x in r.renamed} >= {"embed", "classifier", "blocks.mix"}
    assert r.a.mode == "reference" and r.b.mode == "script"


def test_a_missing_reference_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="no such reference file"):
        reference.load(str(tmp_path / "nothing.audit"))
