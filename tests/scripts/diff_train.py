"""Script mode's planted pairs: ``python diff_train.py VARIANT [STEPS]`` trains
tests/targets/diff_pairs.py's variant with its own loop (the script seeds itself)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "targets"))

from diff_pairs import train  # noqa: E402

if __name__ == "__main__":
    train(sys.argv[1] if len(sys.argv) > 1 else "base", int(sys.argv[2]) if len(sys.argv) > 2 else 6)
