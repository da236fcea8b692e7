"""What `audit resume` costs: a passing resume audit (runs A, B and C in fresh processes)
against two plain runs of S steps (fresh processes, no tracing, one after the other), side by
side in one run, medians of several rounds. The issue's target is a ratio of at most 1.2.

    PYTHONPATH=. python benchmarks/bench_resume.py [--rounds 3] [--target FILE:NAME] [--jobs 2]

The default target is the complete-checkpoint trainer of the tests (dropout, shuffled loader,
scheduler, momentum); ``--target benchmarks/resume_cnn.py:build`` is the course CNN with a
complete checkpoint.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from audit.probes.resume.orchestrate import ResumeOptions, audit_resume  # noqa: E402

DEFAULT_TARGET = os.path.join(ROOT, "tests", "targets", "resume_complete.py") + ":build"


def plain_run(target: str, steps: int) -> None:
    """One plain run in this process: load the target, train ``steps`` steps, no tracing."""
    from audit.probes.run.target import load_target
    from audit.probes.run.training import compute_loss, cycle_batches, make_scheduler, optimizer_step
    from audit.probes.run.seeding import seed_all

    seed_all(0)
    setup = load_target(target, batches=steps)
    optimizer = setup.optimizer(setup.model.parameters())
    scheduler = make_scheduler(setup, optimizer)
    setup.model.train()
    for _, batch in cycle_batches(setup.data, steps):
        optimizer.zero_grad(set_to_none=True)
        compute_loss(setup, batch).backward()
        optimizer_step(optimizer, scheduler)


def two_plain_runs(target: str, steps: int, cwd: str) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    for _ in range(2):
        subprocess.run([sys.executable, __file__, "--plain", target, str(steps)], check=True,
                       env=env, cwd=cwd)
    return time.perf_counter() - start


def resume_audit(target: str, jobs: int, cwd: str) -> tuple[float, int]:
    start = time.perf_counter()
    result = audit_resume(ResumeOptions(target=target, jobs=jobs, cwd=cwd))
    if result.verdict != "equivalent":
        raise SystemExit(f"the benchmark target must pass; got {result.verdict}")
    return time.perf_counter() - start, result.steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", default=DEFAULT_TARGET)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plain", nargs=2, metavar=("TARGET", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain_run(args.plain[0], int(args.plain[1]))
        return
    cwd = os.path.dirname(os.path.abspath(args.target.split(":")[0]))
    a, p, steps = [], [], 0
    for _ in range(args.rounds):
        seconds, steps = resume_audit(args.target, args.jobs, cwd)
        a.append(seconds)
        p.append(two_plain_runs(args.target, steps, cwd))
    ma, mp = statistics.median(a), statistics.median(p)
    print(f"{os.path.basename(args.target)}, S={steps}, jobs {args.jobs}, medians of {args.rounds}")
    print(f"{'2 plain runs s':>15} {'resume audit s':>15} {'ratio':>7}")
    print(f"{mp:>15.2f} {ma:>15.2f} {ma / mp:>7.3f}")


if __name__ == "__main__":
    main()
