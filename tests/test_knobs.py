"""Knobs hold against a target that tries to undo them; observations name the user's line."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code: str) -> list:
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True, cwd=ROOT).stdout.split()


def test_deterministic_knob_holds_against_the_target():
    out = run(
        "import torch; from audit.probes.run import knobs; knobs.observe(); "
        "knobs.apply(['deterministic_algorithms']); "
        "torch.backends.cudnn.benchmark = True; torch.use_deterministic_algorithms(False); "
        "print(torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(), "
        "torch.backends.cudnn.deterministic, torch.utils.deterministic.fill_uninitialized_memory)")
    assert out == ["False", "True", "True", "False"]


def test_dataloader_and_thread_knobs_and_observations():
    out = run(
        "import torch; from audit.probes.run import knobs; knobs.observe(); "
        "knobs.apply(['dataloader', 'one_thread']); "
        "from torch.utils.data import DataLoader; "
        "dl = DataLoader(list(range(8)), batch_size=2, num_workers=2, in_order=False); "
        "torch.set_num_threads(2); "
        "o = knobs.observed(); "
        "print(dl.num_workers, dl.in_order, torch.get_num_threads(), o['loaders'][0]['num_workers'], "
        "o['loaders'][0]['where'], o['threads']['where'])")
    assert out[:4] == ["0", "True", "1", "2"]
    assert out[4] == "<string>:1" and out[5] == "<string>:1"
