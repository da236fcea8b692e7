"""Loading targets: every failure is one line that says what to do."""
import keyword
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from audit.probes.run.target import Target, TargetError, TargetSpec, load_target, parse_spec, split_spec


def write(tmp_path, body, name="t.py"):
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def test_file_target_with_a_sibling_import(tmp_path):
    write(tmp_path, "import torch\nWIDTH = 4\n", "helper_mod_xyz.py")
    path = write(tmp_path, "from helper_mod_xyz import WIDTH\nfrom torch import nn\n"
                           "def build():\n    return nn.Linear(WIDTH, 2)\n")
    setup = load_target(path + ":build")
    assert setup.synthetic and isinstance(setup.model, nn.Linear)
    x, y = setup.data[0]
    assert x.shape[1:] == (4,) and int(y.max()) < 2
    assert sys.path[0] == str(tmp_path)


def test_module_target_and_audit_target_object():
    setup = load_target("audit.example:build")
    assert not setup.synthetic and setup.model is not None
    t = Target(model=nn.Linear(2, 2), data=[(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))])
    from audit.probes.run.target import normalize
    assert normalize(t, "x").data is t.data


@pytest.mark.parametrize("spec,needle", [
    ("nocolon.py", "name the callable after a colon"),
    ("missing_file_abc.py:build", "does not exist"),
    ("no_such_module_abc:build", "cannot import module"),
    ("audit.example:nothing", "has no 'nothing'"),
    ("audit.example:SimpleCNN.__doc__", "not a callable"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(TargetError, match=needle):
        load_target(spec)


@pytest.mark.parametrize("body,needle", [
    ("def build(x):\n    return None\n", "must take no arguments"),
    ("def build():\n    raise ValueError('boom')\n", "raised ValueError: boom"),
    ("def build():\n    return 3\n", "return an nn.Module"),
    ("from torch import nn\ndef build():\n    return {'model': nn.Linear(1, 1)}\n", "without 'data'"),
    ("from torch import nn\ndef build():\n    return {'model': nn.Linear(1, 1), 'data': [], 'lr': 1}\n", "unknown key"),
    ("from torch import nn\ndef build():\n    return {'model': nn.Linear(1, 1), 'data': iter([])}\n", "re-iterable"),
    ("import nonexistent_pkg_q\n", "importing"),
])
def test_bad_targets(tmp_path, body, needle):
    with pytest.raises(TargetError, match=needle):
        load_target(write(tmp_path, body) + ":build")


def test_bare_module_input_shape_and_classes_are_inferred_or_given():
    from audit.probes.run.target import normalize
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(7))
    setup = normalize(conv, "x", input_shape=(3, 16, 16), num_classes=5)
    x, y = setup.data[0]
    assert x.shape[1:] == (3, 16, 16) and int(y.max()) < 5
    with pytest.raises(TargetError, match="--input-shape"):
        normalize(nn.ReLU(), "x")


def test_split_spec_keeps_windows_like_paths_whole():
    assert split_spec("a/b.py:build") == ("a/b.py", "build")


def test_target_arguments_are_passed_to_the_callable(tmp_path):
    (tmp_path / "t.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def build(width=2, act='relu', dims=(1, 2)):\n"
        "    assert dims == (1, 2)\n"
        "    return {'model': nn.Linear(width, 2),\n"
        "            'data': [(torch.zeros(1, width), torch.zeros(1, dtype=torch.long))],\n"
        "            'scheduler': lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1), 'evaluate': lambda m: 0.5}\n")
    setup = load_target(f"{tmp_path / 't.py'}:build,width=3,act=gelu,dims=(1, 2)")
    assert setup.model.in_features == 3
    assert setup.scheduler is not None and setup.evaluate(setup.model) == 0.5
    with pytest.raises(TargetError, match="KEY=VALUE"):
        load_target(f"{tmp_path / 't.py'}:build,3")
    with pytest.raises(TargetError, match="accept the arguments"):
        load_target(f"{tmp_path / 't.py'}:build,depth=3")


_keys = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda k: not keyword.iskeyword(k))
_values = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                    st.text(alphabet="abc ,=()'\"xyz", max_size=8),
                    st.tuples(st.integers(), st.integers()), st.lists(st.integers(), max_size=3))


@given(st.dictionaries(_keys, _values, max_size=4))
def test_target_spec_round_trips(kwargs):
    spec = TargetSpec("pkg/train.py", "build", kwargs)
    parsed = parse_spec(str(spec))
    assert (parsed.where, parsed.name) == ("pkg/train.py", "build")
    assert parsed.kwargs == kwargs
