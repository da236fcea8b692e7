"""End to end: planted checkpoint omissions are caught at the right step and stage and
attributed to the right piece; a complete checkpoint passes; a nondeterministic trainer is
reported as such (a complete checkpoint and a load that raises: ``test_resume_cli.py``). Each audit spawns fresh
processes, so
the audits run once per session, two at a time, and the tests assert on their results."""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from audit.probes.errors import UsageError
from audit.probes.resume.orchestrate import ResumeOptions, audit_resume
from audit.reports import json_report
from audit.probes.results.resume import RESUME_SOURCES, RESUME_STAGES, ResumeResult

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "targets")
PLANTED = ("resume_rng", "resume_epoch", "resume_scheduler", "resume_momentum", "resume_worker",
           "resume_nondeterministic")


def _audit(name: str):
    opts = ResumeOptions(target=os.path.join(TARGETS, f"{name}.py") + ":build", cwd=TARGETS)
    try:
        return audit_resume(opts)
    except UsageError as exc:
        return exc


@pytest.fixture(scope="session")
def audits():
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_audit, name) for name in PLANTED}
        return {name: f.result() for name, f in futures.items()}


def _diverges(result, stage, source, knob):
    assert isinstance(result, ResumeResult), result
    assert result.error is None, result.error
    assert (result.verdict, result.steps, result.at, result.epoch_length) == ("diverges", 10, 6, 4)
    d = result.first_divergence
    assert d.stage == stage and d.step == result.at
    assert [c.source for c in result.causes] == [source]
    assert result.causes[0].confirmed and result.causes[0].fix
    assert result.causes[0].where.startswith("resume_")
    assert [(t.knob, t.removed) for t in result.knob_trials][-1] == (knob, True)
    return d


def test_rng_not_restored_with_dropout(audits):
    r = audits["resume_rng"]
    _diverges(r, "rng", "rng_state", "torch_rng")
    assert r.detail["rng_streams"] == ["torch_cpu"]
    assert r.state_differences == []


def test_shuffled_loader_restarting_its_epoch(audits):
    r = audits["resume_epoch"]
    d = _diverges(r, "data", "data_position", "data_position")
    assert d.tensor == "inputs" and r.detail["data_difference"] == "order"


def test_scheduler_not_saved(audits):
    r = audits["resume_scheduler"]
    d = _diverges(r, "state", "scheduler", "scheduler")
    assert d.tensor == "scheduler"
    assert [x.piece for x in r.state_differences] == ["scheduler"]
    assert "scheduler.load_state_dict" in r.causes[0].fix


def test_optimizer_momentum_not_saved(audits):
    r = audits["resume_momentum"]
    d = _diverges(r, "state", "optimizer_state", "optimizer_state")
    assert (d.module, d.tensor) == ("0", "optimizer state of 0.weight")
    assert {x.piece for x in r.state_differences} == {"optimizer state"}


def test_worker_side_augmentation_rng(audits):
    r = audits["resume_worker"]
    d = _diverges(r, "data", "worker_rng", "worker_seeds")
    assert r.detail["data_difference"] == "content" and d.tensor == "inputs"


def test_nondeterministic_trainer(audits):
    r = audits["resume_nondeterministic"]
    assert isinstance(r, ResumeResult)
    assert (r.verdict, r.first_divergence) == ("nondeterministic", None)
    assert r.uninterrupted is not None
    assert [c.source for c in r.causes] == ["unknown"] and "audit determinism" in r.causes[0].fix


def test_json_follows_the_contract(audits):
    for name in PLANTED:
        data = json_report.json.loads(json_report.dumps(audits[name]))
        assert list(data)[:6] == ["schema", "verdict", "steps", "at", "first_divergence", "causes"]
        assert data["schema"] == "audit.resume/1"
        if data["first_divergence"]:
            assert data["first_divergence"]["stage"] in RESUME_STAGES
            assert set(data["first_divergence"]) >= {"step", "stage", "module", "tensor"}
        assert all(c["source"] in RESUME_SOURCES for c in data["causes"])
        assert ResumeResult.from_dict(data).to_dict() == data


@pytest.mark.parametrize("steps,at", [(5, 5), (5, 0), (3, 7)])
def test_bad_steps_are_refused_before_training(steps, at):
    with pytest.raises(UsageError, match="--at|--steps"):
        audit_resume(ResumeOptions(target="nowhere.py:build", steps=steps, at=at))
