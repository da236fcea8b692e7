"""Units of ``audit resume`` that need no fresh process: the plan's defaults, the resumed
loop's data position, the state comparison, the DataLoader pass recorded and replayed."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from audit.probes.errors import UsageError
from audit.probes.results.resume import StateDifference
from audit.probes.resume import loader, state
from audit.probes.resume.attribute import applicable, plan
from audit.probes.resume.session import choose_plan
from audit.probes.run.training import LiveObjects, cycle_batches

import pytest

CPU = torch.device("cpu")


@given(st.integers(1, 16))
def test_default_plan_checkpoints_inside_an_epoch_and_crosses_the_next_boundary(length):
    p = choose_plan(None, None, length)
    assert 0 < p.at < p.steps and p.auto
    if length > 1:
        assert p.at % length != 0  # not on an epoch boundary
    assert p.steps > (p.at // length + 1) * length  # past the next boundary
    assert p.at >= length  # a later epoch than the first, so a replayed epoch 0 shows


@given(st.integers(2, 200), st.integers(1, 199))
def test_given_steps_and_at_are_kept_or_refused(steps, at):
    if at < steps:
        p = choose_plan(steps, at, None)
        assert (p.steps, p.at) == (steps, at)
    else:
        with pytest.raises(UsageError):
            choose_plan(steps, at, None)


@settings(max_examples=60)
@given(st.integers(1, 6), st.integers(1, 20), st.data())
def test_resumed_loop_continues_exactly_where_the_uninterrupted_one_was(n, steps, data):
    start = data.draw(st.integers(0, steps))
    batches = list(range(n))
    whole = list(cycle_batches(batches, steps))
    assert list(cycle_batches(batches, steps, start)) == whole[start:]


def test_resumed_loop_opens_the_pass_the_checkpoint_stood_in():
    opened = []

    def open_pass(epoch):
        opened.append(epoch)
        return iter("abcd")

    out = list(cycle_batches("abcd", 11, 6, open_pass))
    assert opened == [1, 2] and [b for _, b in out] == list("cdabc")
    assert [s for s, _ in out] == list(range(6, 11))


def _live(momentum=0.9):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    return LiveObjects(model, opt, sched, [])


def test_state_differences_name_the_piece():
    a, b = _live(), _live()
    same = state.state_record(a, [], 3, CPU)
    assert state.differences(same, state.state_record(b, [], 3, CPU)) == []
    b.optimizer.state.clear()
    b.scheduler.last_epoch += 1
    with torch.no_grad():
        b.model[1].running_mean.add_(1)
    diffs = state.differences(same, state.state_record(b, [], 3, CPU))
    assert StateDifference("buffer", "1.running_mean", "1") in diffs
    assert StateDifference("optimizer state", "0.weight", "0") in diffs
    assert StateDifference("scheduler") in diffs
    assert not any(d.piece == "parameter" for d in diffs)
    moot = state.moot(same, state.state_record(b, [], 3, CPU))
    assert {"torch_rng", "numpy_python_rng", "grad_scaler"} <= moot
    assert not moot & {"optimizer_state", "scheduler", "buffers"}


def _loader():
    data = TensorDataset(torch.arange(24.0).reshape(12, 2), torch.arange(12))
    return DataLoader(data, batch_size=3, shuffle=True)


def _firsts(batches):
    return [int(y[0]) for _, y in batches]


def test_recorded_pass_is_replayed_and_the_rng_rewound():
    torch.manual_seed(1)
    uninterrupted = _loader()
    recorder = loader.PassRecorder(uninterrupted)
    epoch1 = list(recorder.open_pass(0))
    record = recorder.record()
    assert sorted(i for batch in record.order for i in batch) == list(range(12))
    assert _firsts(epoch1) == [batch[0] for batch in record.order]
    resumed = _loader()
    torch.manual_seed(99)  # whatever state the resumed run has
    own = torch.get_rng_state()
    replayed = list(loader.resumed_pass(resumed, 2, ("data_position",), record))
    assert _firsts(replayed) == _firsts(epoch1)  # the uninterrupted order
    assert torch.equal(torch.get_rng_state(), own)  # the pass's own draws taken back
    torch.manual_seed(99)
    plain = list(loader.resumed_pass(_loader(), 2, (), record))
    assert _firsts(plain) != _firsts(epoch1)  # without the knob: a new order


def test_knob_plan_follows_the_divergence():
    record = {"skip": 2, "loader": True, "workers": True, "scheduler": True, "scalers": 0,
              "buffers": False}
    assert applicable(record) == ["torch_rng", "numpy_python_rng", "data_position", "worker_seeds",
                                  "scheduler", "optimizer_state"]
    assert plan(record, None, [StateDifference("scheduler")])[0] == "scheduler"
    assert applicable({"skip": 0, "loader": True})[:3] == ["torch_rng", "numpy_python_rng", "optimizer_state"]


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(torch.arange(10.0).reshape(5, 2))


def test_an_iterable_dataset_is_passed_through_unrecorded():
    stream = DataLoader(_Stream(), batch_size=2)
    recorder = loader.PassRecorder(stream)
    assert len(list(recorder.open_pass(0))) == 3 and recorder.record() is None
    assert not loader.is_loader(stream)
