"""run_init on real architectures: the built-in example, torchvision's resnet18 and vgg11."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision
from torch import nn

import audit.probes.init.engine as init_audit
from audit.example import SimpleCNN, build
from audit.probes.init.engine import DEFAULT_SCHEMES, run_init
from audit.probes.results import BUILTIN_SCHEMES, InitResult
from audit.probes.run.training import TrainingSetup, synthetic_batches


def tv_setup(model: nn.Module, side: int, batch: int = 4, count: int = 2) -> TrainingSetup:
    data = synthetic_batches((3, side, side), 10, batch, count, seed=0)
    return TrainingSetup(model=model, data=data, synthetic=True)


@pytest.fixture(scope="module")
def example():
    torch.manual_seed(0)
    target = build()
    setup = TrainingSetup(model=target["model"], data=target["data"], loss=target["loss"],
                          optimizer=target["optimizer"])
    calls = []
    result = run_init(setup, schemes=["default", "kaiming_normal", "lsuv"], steps=2,
                      progress=calls.append, target="audit.example:build")
    return setup, result, calls


def test_example_is_healthy_under_default_and_kaiming(example):
    _, result, calls = example
    assert [c.phase for c in calls if c.done == 0] == [
        "scheme default (1 of 3)", "scheme kaiming_normal (2 of 3)", "scheme lsuv (3 of 3)"]
    assert [c.done for c in calls[:3]] == [0, 1, 2] and calls[0].total == 2
    for name in ("default", "kaiming_normal"):
        scheme = result.scheme(name)
        assert scheme.error is None and scheme.findings == [], (name, scheme.findings)
        assert scheme.verdict == "healthy"
    assert result.verdict == "healthy" and result.passed


def test_example_layers_are_measured_in_execution_order(example):
    _, result, _ = example
    layers = result.scheme("default").layers
    assert [l.name for l in layers] == ["features.0", "features.1", "features.4", "features.5",
                                        "features.8", "features.9", "classifier.1",
                                        "classifier.4"]
    assert [l.depth for l in layers if l.weight_layer] == [0, 1, 2, 3, 4]
    conv = layers[0]
    assert conv.nonlinearity == "relu" and conv.units == 32
    assert 0 <= conv.dead_fraction <= 1 and conv.grad_norm > 0 and conv.weight_norm > 0
    assert conv.output_grad_norm > 0 and conv.act_std > 0
    assert layers[-1].nonlinearity == "linear" and layers[-1].dead_fraction is None
    assert len(result.scheme("default").loss) == 2


def test_recommendation_code_runs_on_a_fresh_model(example):
    setup, result, _ = example
    assert result.recommended in {"default", "kaiming_normal", "lsuv"}
    assert result.recommendation_reason
    inputs = next(iter(setup.data))[0]
    fresh = SimpleCNN()
    exec(compile(result.recommendation_code, "<recommendation>", "exec"),
         {"model": fresh, "inputs": inputs})
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_the_model_is_left_as_the_target_built_it(monkeypatch):
    torch.manual_seed(0)
    model = SimpleCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    setup = tv_setup(model, 32, batch=8)
    real_deepcopy = copy.deepcopy

    def no_model_copies(obj, *args, **kwargs):
        assert not isinstance(obj, nn.Module), "the model must not be copied"
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    run_init(setup, schemes=["orthogonal", "normal:0.5", "lsuv"], steps=2)
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_resnet18_as_torchvision_builds_it_is_healthy():
    torch.manual_seed(0)
    result = run_init(tv_setup(torchvision.models.resnet18(num_classes=10), 64),
                      schemes=["default"], steps=1)
    default = result.scheme("default")
    assert default.error is None
    assert default.findings == [], [f.message for f in default.findings]
    assert len([l for l in default.layers if l.weight_layer]) == 21
    assert result.verdict == "healthy"


def test_vgg11_as_torchvision_builds_it_is_healthy():
    torch.manual_seed(0)
    result = run_init(tv_setup(torchvision.models.vgg11(num_classes=10), 32), steps=1,
                      schemes=["default"])
    default = result.scheme("default")
    assert default.error is None
    assert default.findings == [], [f.message for f in default.findings]
    relus = [l for l in default.layers if l.weight_layer and l.nonlinearity == "relu"]
    assert len(relus) == 10  # inplace ReLU after every conv and hidden linear was seen


def test_every_scheme_name_works_and_the_json_round_trips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(8 * 3 * 3, 16), nn.LeakyReLU(0.1), nn.Linear(16, 10))
    schemes = [*BUILTIN_SCHEMES, "normal:0.05"]
    result = run_init(tv_setup(model, 10, batch=16), schemes=schemes, steps=2)
    assert [s.name for s in result.schemes] == schemes
    for scheme in result.schemes:
        assert scheme.error is None, (scheme.name, scheme.error)
        assert len(scheme.loss) == 2 and scheme.layers and scheme.score is not None
    assert result.environment["torch"] == torch.__version__
    data = json.loads(json.dumps(result.to_dict()))
    assert data["schema"] == "audit.init/1" and list(data)[:5] == \
        ["schema", "verdict", "recommended", "schemes", "recommendation"]
    assert data["recommendation"]["scheme"] == data["recommended"]
    assert set(data["recommendation"]) == {"scheme", "reason", "kept_own", "against", "seeds",
                                           "delta", "ci"}
    assert all("loss_seeds" in s and "depth_trend" not in s for s in data["schemes"])
    again = InitResult.from_dict(data)
    assert again.scheme("lsuv").layers[0].name == "0"
    assert again.recommendation.scheme == result.recommended
    assert DEFAULT_SCHEMES == list(BUILTIN_SCHEMES)


def test_a_scheme_that_raises_is_recorded_and_the_others_run(monkeypatch):
    real = init_audit.apply_scheme

    def flaky(model, scheme, *args, **kwargs):
        if scheme == "orthogonal":
            raise RuntimeError("boom")
        return real(model, scheme, *args, **kwargs)

    monkeypatch.setattr(init_audit, "apply_scheme", flaky)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10))
    result = run_init(TrainingSetup(model=model, data=synthetic_batches((8,), 10, 16, 1, 0)),
                      schemes=["orthogonal", "kaiming_normal"], steps=1)
    broken = result.scheme("orthogonal")
    assert broken.error == "RuntimeError: boom" and broken.verdict == "unhealthy"
    assert result.scheme("kaiming_normal").error is None
    assert result.recommended != "orthogonal"


def test_bad_arguments_fail_before_running():
    setup = TrainingSetup(model=nn.Linear(2, 2), data=[(torch.zeros(1, 2), torch.zeros(1).long())])
    with pytest.raises(ValueError, match="valid schemes"):
        run_init(setup, schemes=["kaiming"])
    with pytest.raises(ValueError, match="steps"):
        run_init(setup, steps=0)


def test_a_model_that_cannot_run_is_an_error_of_the_result():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("forward is broken")

    setup = TrainingSetup(model=Broken(), data=synthetic_batches((4,), 2, 8, 1, 0))
    result = run_init(setup, schemes=["default", "kaiming_normal"], steps=1)
    assert "forward is broken" in result.error and not result.passed
    assert all("forward is broken" in s.error for s in result.schemes)
    assert result.recommended is None and result.recommendation_code == ""


def test_results_do_not_depend_on_which_schemes_ran_before():
    def setup():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 32),
                              nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
        return TrainingSetup(model=model, data=synthetic_batches((16,), 10, 32, 2, seed=0))

    alone = run_init(setup(), schemes=["lsuv", "xavier_uniform"], steps=2)
    after = run_init(setup(), schemes=["kaiming_normal", "orthogonal", "xavier_normal", "lsuv",
                                       "xavier_uniform"], steps=2)
    for name in ("lsuv", "xavier_uniform", "default"):
        assert alone.scheme(name).loss == after.scheme(name).loss, name
