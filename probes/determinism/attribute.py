"""From knob reruns to proven causes, each with its evidence and a fix as code.

:func:`plan` says which knobs are worth a rerun for a divergence; the orchestrator reruns each
pair of fresh processes with one knob set, up to the divergent step; :func:`causes` keeps the
knobs that removed the divergence (each a confirmed cause), adds the seed escapes that no
knob proved (unconfirmed, with their place), and falls back to ``unknown``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from audit.probes.run.compare import Parting
from audit.probes.run.knobs import KNOBS
from audit.probes.results import Cause, KnobTrial, RngEscape, SeedCall

#: The order causes are listed in: a knob that names a place beats one that names a subsystem.
ORDER = ("seed_escapes", "pin_seeds", "pythonhashseed", "dataloader", "cudnn_benchmark_off",
         "deterministic_algorithms", "fill_uninitialized_memory", "one_thread")


def plan(parting: Parting, device: str, escapes: list[Any], observed: dict[str, Any], env: dict[str, Any],
         varying: Sequence[SeedCall] = ()) -> list[str]:
    """The knobs to try, in the order the evidence makes them likely: what the runs showed
    first (escaped seeds, seeds that changed between runs, multi-worker loaders, a thread
    count the code sets, cuDNN autotuning, a kernel-level stage), then the rest. A seed that
    changed is tried first unless the stage is a computation, where a kernel is likelier; the
    string-hash seed just before it, as a seed may be computed with hash()."""
    flags = env.get("flags") or {}
    cuda = device.startswith("cuda")
    computed = parting.stage in ("forward", "backward", "optimizer")
    first = []
    if escapes:
        first.append("seed_escapes")
    if observed.get("loaders") and parting.stage in ("data", "rng"):
        first.append("dataloader")
    if observed.get("threads"):
        first.append("one_thread")
    if cuda and observed.get("cudnn_benchmark"):
        first.append("cudnn_benchmark_off")
    seed_knobs = ([] if env.get("PYTHONHASHSEED") else ["pythonhashseed"]) + ["pin_seeds"]
    if varying and not computed:
        at = 1 if escapes else 0
        first[at:at] = seed_knobs
    if computed and cuda:  # on the CPU few kernels have atomics: after the likelier knobs
        first.append("deterministic_algorithms")
    if varying and computed:
        first += seed_knobs
    rest = []
    if not env.get("PYTHONHASHSEED"):
        rest.append("pythonhashseed")
    if observed.get("loaders") or parting.stage in ("data", "rng"):
        rest.append("dataloader")
    if cuda and flags.get("cudnn_benchmark"):
        rest.append("cudnn_benchmark_off")
    rest += ["deterministic_algorithms", "fill_uninitialized_memory"]
    if flags.get("num_threads", 1) > 1:
        rest.append("one_thread")
    return list(dict.fromkeys(first + rest))


_ESCAPE_FIX = {
    "numpy.random.default_rng": "rng = np.random.default_rng(seed)  # derive it from your run's seed",
    "numpy.random.seed": "np.random.seed(seed)  # a fixed seed, not None or the clock",
    "numpy.random.RandomState": "rs = np.random.RandomState(seed)",
    "random.Random": "rng = random.Random(seed)",
    "random.seed": "random.seed(seed)  # a fixed seed, not None or the clock",
    "random.SystemRandom": "rng = random.Random(seed)  # SystemRandom cannot be seeded",
    "torch.seed": "torch.manual_seed(seed)  # torch.seed() draws a new seed from the OS",
    "torch.Generator.seed": "g = torch.Generator().manual_seed(seed)  # not g.seed()",
    "torch.Generator.manual_seed": "g.manual_seed(seed)  # a fixed seed, not the clock",
    "torch.manual_seed": "torch.manual_seed(seed)  # a fixed seed, not the clock",
}


#: Global generators drawn from before seeding (:mod:`probes.script.draws`): the seeding call.
_GLOBAL_FIX = {
    "torch global generator": "torch.manual_seed(seed)",
    "torch CUDA global generator": "torch.manual_seed(seed)  # seeds every CUDA device too",
    "numpy global generator": "np.random.seed(seed)",
    "python random global generator": "random.seed(seed)",
}


def escape_fix(kind: str, where: Optional[str] = None) -> str:
    base = kind.split("(")[0]
    if base in _GLOBAL_FIX:
        before = f", before {where}" if where else ""
        fix = f"{_GLOBAL_FIX[base]}  # at the very start of the script{before} (the first draw)"
        if base.startswith("torch"):
            fix += ("\n# and give random_split and samplers a seeded generator of their own:\n"
                    "parts = random_split(dataset, lengths, generator=torch.Generator().manual_seed(seed))\n"
                    "loader = DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(seed))")
        return fix
    for key, fix in _ESCAPE_FIX.items():
        if base == key or base.startswith(key + "."):
            return fix
    if base.startswith("numpy.random."):
        return f"{base}(seed)  # give the bit generator a seed"
    return "seed this generator from your run's seed"


def generator_fix(esc: RngEscape) -> str:
    """The fix for one escape, as code the user can apply at its place: for a generator a
    library made, seed the object the user holds (or what the library call returns)."""
    if not esc.made_by:
        return escape_fix(esc.kind, esc.where)
    if esc.holder:
        return f"{esc.holder}.seed(seed)  # it holds the generator {esc.made_by} made unseeded"
    return (f"# {esc.made_by} (called at {esc.where or 'an unknown place'}) made it without a "
            "seed: seed what it returns\n# from your run's seed, as that library allows, before "
            "anything draws from it, e.g.\nobj.seed(seed)  # or obj.reset(seed=seed)")


def drawn(escapes: list[RngEscape]) -> list[RngEscape]:
    """The escapes whose generators were drawn from: the only ones that can part runs."""
    return [e for e in escapes if e.drawn]


def _where_text(parting: Parting) -> str:
    if parting.stage == "init":
        return "the initial parameters"
    return f"step {parting.step} ({parting.stage})"


@dataclass
class Evidence:
    """What every cause's wording draws on: where the runs part, what the runs observed."""

    at: str  # "step 3 (forward)" or "the initial parameters"
    caveat: str  # said when the divergence did not show again when repeated
    escapes: list[Any]  # RngEscape
    varying: Sequence[SeedCall]  # SeedCall whose values changed between runs
    observed: dict[str, Any]
    module: Optional[str]
    module_where: Optional[str]
    removed: list[Any]  # the knobs that removed the divergence

    @property
    def in_module(self) -> str:
        return f" in module {self.module!r}" if self.module else ""


def made_text(esc: RngEscape) -> str:
    """``numpy.random.default_rng() at train.py:12``, naming the library call that made it."""
    by = f" (made by {esc.made_by})" if esc.made_by else ""
    return f"{esc.kind}{by} at {esc.where or 'an unknown place'}"


def _escape_causes(ev: Evidence, proof: str) -> list[Any]:
    return [Cause("unseeded_rng", True,
                  f"{made_text(esc)} is {esc.detail or 'not seeded'}; "
                  f"the runs part at {ev.at}; {proof}{ev.caveat}",
                  generator_fix(esc), esc.where) for esc in ev.escapes]


def _pinned_seed_causes(ev: Evidence, proof: str) -> list[Any]:
    return [seed_cause(call, f"the runs part at {ev.at}; {proof}{ev.caveat}", True)
            for call in ev.varying]


def _hash_seed_causes(ev: Evidence, proof: str) -> list[Any]:
    return [Cause("hash_seed", True,
                  f"the runs part at {ev.at}, and only when every run has the same "
                  f"PYTHONHASHSEED do they agree ({proof}): the code depends on the order "
                  f"of a set or on hash() of strings{ev.caveat}",
                  "iterate sorted(the_set) instead of the set, and don't use hash() of "
                  "strings for seeds or ids; or start Python with PYTHONHASHSEED=0 "
                  "(it cannot be set from inside a running process)", None)]


def _loader_causes(ev: Evidence, proof: str) -> list[Any]:
    loader = (ev.observed.get("loaders") or [{}])[0]
    what = []
    if loader.get("num_workers"):
        what.append(f"num_workers={loader['num_workers']}")
    if loader.get("in_order") is False:
        what.append("in_order=False")
    return [Cause("dataloader", True,
                  f"the runs part at {ev.at}; {proof}"
                  + (f"; the DataLoader uses {', '.join(what)}" if what else "") + ev.caveat,
                  "DataLoader(..., in_order=True,\n"
                  "           generator=torch.Generator().manual_seed(seed),\n"
                  "           worker_init_fn=lambda i: np.random.seed(torch.initial_seed() % 2**32))\n"
                  "# or num_workers=0 while you debug",
                  loader.get("where"))]


def _cudnn_causes(ev: Evidence, proof: str) -> list[Any]:
    return [Cause("cudnn_benchmark", True,
                  f"cuDNN autotuning is on and the runs part at {ev.at}; {proof}{ev.caveat}",
                  "torch.backends.cudnn.benchmark = False", ev.observed.get("cudnn_benchmark"))]


def _algorithm_causes(ev: Evidence, proof: str) -> list[Any]:
    evidence = (f"the runs part at {ev.at}{ev.in_module}, where a kernel's result depends on "
                f"execution order (atomic adds); {proof}{ev.caveat}")
    fix = ("torch.use_deterministic_algorithms(True)\n"
           "torch.backends.cudnn.deterministic = True\n"
           "torch.backends.cudnn.benchmark = False\n"
           "# and before the first CUDA call, in the shell or at the top of the script:\n"
           "# os.environ[\"CUBLAS_WORKSPACE_CONFIG\"] = \":4096:8\"")
    return [Cause("nondeterministic_algorithm", True, evidence, fix, ev.module_where)]


def _uninitialized_causes(ev: Evidence, proof: str) -> list[Any]:
    if "deterministic_algorithms" in ev.removed:  # the broader knob already says it
        return []
    evidence = (f"the runs part at {ev.at}{ev.in_module}; deterministic algorithms alone "
                f"did not remove it, filling uninitialized memory did: something "
                f"reads torch.empty() memory before writing it; {proof}{ev.caveat}")
    fix = ("torch.use_deterministic_algorithms(True)  # fills torch.empty() memory\n"
           "# better: create the tensor with torch.zeros(...) instead of torch.empty(...)")
    return [Cause("nondeterministic_algorithm", True, evidence, fix, ev.module_where)]


def _thread_causes(ev: Evidence, proof: str) -> list[Any]:
    threads = ev.observed.get("threads") or {}
    return [Cause("thread_count", True,
                  f"the runs part at {ev.at}; {proof}: the result depends on how the work "
                  f"is split across CPU threads{ev.caveat}",
                  "torch.set_num_threads(1)  # or the same fixed count in every run and machine",
                  threads.get("where"))]


#: The confirmed causes of each knob that removed the divergence, in :data:`ORDER`.
PROVEN: dict[str, Any] = {
    "seed_escapes": _escape_causes, "pin_seeds": _pinned_seed_causes,
    "pythonhashseed": _hash_seed_causes, "dataloader": _loader_causes,
    "cudnn_benchmark_off": _cudnn_causes, "deterministic_algorithms": _algorithm_causes,
    "fill_uninitialized_memory": _uninitialized_causes, "one_thread": _thread_causes,
}
#: Knobs each of whose causes is listed (one per place), not only the first of its source.
EVERY_PLACE = ("seed_escapes", "pin_seeds")


def _proof(trial: KnobTrial) -> str:
    proof = f"with {KNOBS[trial.knob].description}, the runs agreed through step {trial.steps - 1}"
    return proof + (f" ({trial.detail})" if trial.detail else "")


def _unproven(ev: Evidence) -> list[Any]:
    """Escapes and varying seeds that no knob proved: unconfirmed, with their place."""
    out = []
    if "seed_escapes" not in ev.removed:
        out += [Cause("unseeded_rng", False,
                      f"{made_text(esc)} is {esc.detail or 'not seeded'}; seeding it did not by "
                      f"itself remove the divergence at {ev.at}", generator_fix(esc), esc.where)
                for esc in ev.escapes]
    if "pin_seeds" not in ev.removed:
        out += [seed_cause(call, "fixing it did not by itself remove the divergence "
                                 f"at {ev.at}", False) for call in ev.varying]
    return out


def _unknown(ev: Evidence, trials: list[Any]) -> Cause:
    tried = ", ".join(t.knob for t in trials) or "none"
    return Cause("unknown", False,
                 f"the runs part at {ev.at}{ev.in_module}, and no knob removed it "
                 f"(tried: {tried}){ev.caveat}",
                 "look at what this module computes from sources outside the seed: the time, "
                 "os.urandom, uninitialized memory, threads, or external state",
                 ev.module_where)


def causes(parting: Parting, trials: list[Any], escapes: list[Any], observed: dict[str, Any],
           module: Optional[str], module_where: Optional[str],
           reproduced: bool = True, varying: Sequence[SeedCall] = ()) -> list[Cause]:
    """Causes, most likely first. ``trials`` are :class:`KnobTrial`; escapes :class:`RngEscape`;
    ``varying`` the :class:`SeedCall` whose values changed between runs."""
    caveat = "" if reproduced else (" (the divergence is intermittent: the same runs, repeated, "
                                    "did not show it again)")
    ev = Evidence(_where_text(parting), caveat, escapes, varying, observed, module, module_where,
                  [t.knob for t in trials if t.removed])
    out: list[Any] = []
    seen_sources = set()
    for knob in (k for k in ORDER if k in ev.removed):
        trial = next(t for t in trials if t.knob == knob)
        for cause in PROVEN[knob](ev, _proof(trial)):
            if knob in EVERY_PLACE or cause.source not in seen_sources:
                seen_sources.add(cause.source)
                out.append(cause)
    out += _unproven(ev)
    if not any(c.confirmed for c in out):
        out.insert(0, _unknown(ev, trials))
    return out


#: The call to write, per seeding function, in a fix.
_SEED_CALL = {
    "torch.manual_seed": "torch.manual_seed(seed)",
    "torch.cuda.manual_seed": "torch.cuda.manual_seed(seed)",
    "torch.cuda.manual_seed_all": "torch.cuda.manual_seed_all(seed)",
    "torch.Generator.manual_seed": "generator.manual_seed(seed)",
    "numpy.random.seed": "np.random.seed(seed)",
    "numpy.random.default_rng": "rng = np.random.default_rng(seed)",
    "numpy.random.SeedSequence": "ss = np.random.SeedSequence(seed)",
    "random.seed": "random.seed(seed)",
    "random.Random": "rng = random.Random(seed)",
}


def seed_fix(call: SeedCall) -> str:
    """Code that seeds the same generator from the run's seed: in a DataLoader worker, from the
    seed torch gives each worker (fixed by the loader's seed, different per worker)."""
    kind = call.kind
    line = _SEED_CALL.get(kind) or (f"np.random.{kind.rsplit('.', 1)[-1]}(seed)"
                                    if kind.startswith("numpy.random.") else f"{kind}(seed)")
    if not call.in_workers:
        return (f"{line}  # a fixed seed (your run's --seed or a constant), not one computed "
                "at run time from the clock or the process id")
    return ("def worker_init_fn(worker_id):\n"
            "    seed = torch.initial_seed() % 2**32  # fixed by the loader's seed, one per worker\n"
            f"    {line}\n"
            "loader = DataLoader(..., worker_init_fn=worker_init_fn,\n"
            "                    generator=torch.Generator().manual_seed(seed))")


def seed_cause(call: SeedCall, outcome: str, confirmed: bool) -> Cause:
    """An ``unseeded_rng`` cause for a seeding call whose value changed between runs."""
    shown = "; ".join(f"run {i}: {', '.join(map(str, values)) or 'not called'}"
                      for i, values in enumerate(call.values))
    in_workers = " in DataLoader workers" if call.in_workers else ""
    evidence = (f"{call.kind} at {call.where}{in_workers} got other values in each run "
                f"({shown}): the seed is computed at run time (the clock, the process id, ...), "
                f"so the matched seed does not reach it; {outcome}")
    return Cause("unseeded_rng", confirmed, evidence, seed_fix(call), call.where)


def escapes_from(items: list[Any]) -> list[Any]:
    """:class:`RngEscape` records from the escape logs, deduplicated by kind and place."""
    seen: dict[tuple[Any, Any], Any] = {}
    for item in items:
        key = (item.get("kind"), item.get("where"))
        use = item.get("use", "drawn")
        if key in seen:
            esc = seen[key]
            esc.count += item.get("count", 1)
            esc.use = "drawn" if "drawn" in (esc.use, use) else (
                "reseeded" if "reseeded" in (esc.use, use) else "unused")
            esc.holder = esc.holder or item.get("holder")
        else:
            seen[key] = RngEscape(kind=item.get("kind", "?"), where=item.get("where"),
                                  count=item.get("count", 1), detail=item.get("detail", ""),
                                  use=use, made_by=item.get("made_by"),
                                  holder=item.get("holder"))
    return list(seen.values())


def trial(knob: str, removed: bool, steps: int, detail: str = "", pairs: int = 1,
          luck: Optional[float] = None) -> KnobTrial:
    return KnobTrial(knob=knob, source=KNOBS[knob].source, removed=removed, steps=steps,
                     detail=detail, pairs=pairs, luck=luck)
