"""What the Ray executor costs per run against the local pool, for the built-in example.

The same ``audit variance`` (same seeds, steps, sources and ``--jobs``) runs on each executor,
the two interleaved in each round; medians of ``--rounds``. Ray runs on this machine: embedded
(``ray.init()``), or with ``--nodes N`` a local cluster of N nodes joined by its address (the
working folder then travels by Ray's runtime environment, as on a real cluster). Ray's start-up
(once per audit process) is timed apart from the runs. Per-run overhead = (Ray's wall time -
local wall time) / runs, also as a share of a local run's time.

    PYTHONPATH=. python benchmarks/bench_executor.py [--rounds 3] [--seeds 2] [--steps 20] [--jobs 1] [--nodes 0]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def audit(executor: str, address, seeds: int, steps: int, jobs: int) -> tuple:
    """``(wall seconds, runs)`` of one variance audit of the built-in example."""
    from audit.probes.variance.engine import VarianceOptions, audit_variance

    opts = VarianceOptions(seeds=seeds, steps=steps, sources=("init",), jobs=jobs,
                           device="cpu", executor=executor, ray_address=address)
    started = time.perf_counter()
    result = audit_variance(opts)
    wall = time.perf_counter() - started
    assert result.error is None, result.error
    return wall, len(result.runs), [r.metrics for r in result.runs]


def start_ray(nodes: int):
    """Ray joined once (embedded, or a local cluster of ``nodes``); its start-up seconds."""
    import ray

    started = time.perf_counter()
    cluster, address = None, None
    if nodes:
        from ray.cluster_utils import Cluster

        small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(**small)
        cluster.wait_for_nodes()
        address = cluster.address
    from audit.probes.run.executors.ray_cluster import RayExecutor

    RayExecutor(address, os.getcwd()).close()  # joins (and for an address, sends the folder)
    return ray, cluster, address, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--nodes", type=int, default=0, help="a local cluster of this many nodes (0: embedded)")
    args = p.parse_args()
    ray, cluster, address, startup = start_ray(args.nodes)
    walls: dict = {"local": [], "ray": []}
    runs = 0
    try:
        for _ in range(args.rounds):
            local = audit("local", None, args.seeds, args.steps, args.jobs)
            there = audit("ray", address, args.seeds, args.steps, args.jobs)
            assert local[2] == there[2], "the executors gave different numbers"
            walls["local"].append(local[0])
            walls["ray"].append(there[0])
            runs = local[1]
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    local, there = statistics.median(walls["local"]), statistics.median(walls["ray"])
    per_run = (there - local) / runs
    print(f"built-in example, {runs} runs x {args.steps} steps, --jobs {args.jobs}, "
          f"{args.rounds} rounds, Ray {'cluster of ' + str(args.nodes) if args.nodes else 'embedded'}")
    print(f"ray start-up (once per audit process): {startup:.2f} s")
    print(f"{'executor':<8} {'median wall s':>14} {'per run s':>10}")
    print(f"{'local':<8} {local:>14.2f} {local / runs:>10.2f}")
    print(f"{'ray':<8} {there:>14.2f} {there / runs:>10.2f}")
    print(f"ray/local: {there / local:.3f}; overhead per run: {per_run:+.2f} s "
          f"({100 * per_run / (local / runs):+.1f} % of a local run); same numbers: yes")


if __name__ == "__main__":
    main()
