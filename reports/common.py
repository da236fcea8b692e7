"""Wording and formatting shared by the reporters: one vocabulary, whatever the format.

Plain functions over plain values; the per-format modules decide how to escape and lay out.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional

from audit.probes.results import (STAGES, DeterminismResult, Finding, InitResult, NonFinite, RngEscape,
                                  SchemeResult)
from audit.probes.results.diff import DiffResult, RecordResult
from audit.probes.results.resume import ResumeResult
from audit.probes.results.variance import CompareResult, VarianceResult
from audit.reports.ranks import distributed_problem
from audit.probes.results.records import Status

# C0 and C1 control characters except tab and newline: never shown raw to a person (terminal
# escape injection, invisible text) and not allowed by XML 1.0.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: Any) -> str:
    """``text`` as a string with control characters other than tab and newline removed;
    carriage returns become newlines."""
    if text is None:
        return ""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROLS.sub("", text)


def one_line(text: Any) -> str:
    """``text`` on a single line (for table cells and titles)."""
    return " ".join(strip_controls(text).split())


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite number, else ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_num(value: Any, digits: int = 3, missing: str = "n/a") -> str:
    """A compact number: ``1.23e-07``, ``0.5``, ``2.31``; ``n/a`` for missing, ``nan``/``inf``
    for non-finite values."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value).lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number == 0:
        return "0"
    if isinstance(value, int):
        return str(value)
    if abs(number) < 1e-3 or abs(number) >= 1e6:
        return f"{number:.{max(digits - 1, 0)}e}"
    return f"{number:.{digits}g}"


def fmt_loss(value: Any, missing: str = "n/a") -> str:
    """A loss with four decimals so a column of losses lines up (``2.3026``); very large or
    very small ones in scientific notation."""
    number = finite(value)
    if number is None:
        return fmt_num(value, missing=missing)
    if number == 0 or 1e-3 <= abs(number) < 1e5:
        return f"{number:.4f}"
    return fmt_num(number, 4)


def fmt_percent(value: Any, missing: str = "n/a") -> str:
    number = finite(value)
    if number is None:
        return missing if value is None else fmt_num(value)
    return f"{number * 100:.0f}%" if number == 0 or abs(number) >= 0.01 else f"{number * 100:.2f}%"


def fmt_seconds(value: Any) -> str:
    number = finite(value)
    if number is None:
        return "n/a"
    if number < 60:
        return f"{number:.1f} s"
    minutes, seconds = divmod(int(round(number)), 60)
    return f"{minutes} min {seconds:02d} s"


def split_where(where: Optional[str]) -> tuple[Optional[str], Optional[int], Optional[int]]:
    """``"file.py:12"`` -> ``("file.py", 12, None)``; ``"file.py:12:5"`` adds the column;
    ``"file.py"`` -> ``("file.py", None, None)``. Windows drive letters survive
    (``"C:\\x\\t.py:3"``)."""
    if not where:
        return None, None, None
    where = str(where)
    parts = where.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and parts[0]:
        return parts[0], int(parts[1]), int(parts[2])
    head, _, tail = where.rpartition(":")
    if head and tail.isdigit():
        return head, int(tail), None
    return where, None, None


# --------------------------------------------------------------------------- determinism

SOURCE_TITLES = {
    "unseeded_rng": "Randomness the seed does not reach",
    "hash_seed": "Python's string-hash randomization",
    "dataloader": "Data loading",
    "nondeterministic_algorithm": "A nondeterministic kernel",
    "cudnn_benchmark": "The cuDNN autotuner",
    "thread_count": "The number of CPU threads",
    "unsynced_state": "State DDP does not synchronize",
    "sampler_epoch": "A sampler never told the epoch",
    "unknown": "Unknown cause",
}

STAGE_TITLES = {
    "init": "initial parameters",
    "data": "data (the batch)",
    "rng": "random-number state",
    "forward": "forward pass",
    "backward": "backward pass",
    "optimizer": "optimizer update",
}

STAGE_MEANING = {
    "init": "parameters differ before the first step",
    "data": "the batch (inputs or targets) differs",
    "rng": "the random-number state differs at the start of a step whose data and "
           "parameters agree",
    "forward": "a module's output differs although its inputs, parameters and RNG state agree",
    "backward": "gradients differ although the forward pass agreed",
    "optimizer": "parameters differ after the update although gradients agreed",
}

RUN_STATUS_TITLES = {
    Status.OK: "ok",
    Status.CRASHED: "crashed",
    Status.EXITED: "exited early",
    Status.ENDED_EARLY: "ended early",
    Status.KILLED: "killed",
    Status.TIMED_OUT: "timed out",
    Status.INTERRUPTED: "interrupted",
}


def nonfinite_sentence(nf: NonFinite) -> str:
    """One sentence for :class:`~audit.probes.results.NonFinite`: what, where, when."""
    if nf.what == "loss":
        value = {"nan": "NaN", "inf": "+inf", "-inf": "-inf"}.get(nf.value or "", "non-finite")
        return f"the loss became {value} at step {nf.step} (run {nf.run})"
    return f"a gradient became NaN or infinite at step {nf.step} (run {nf.run})"


NONFINITE_FIX = ("lower the learning rate or clip the gradients (torch.nn.utils.clip_grad_norm_); "
                 "check the data for NaN; torch.autograd.set_detect_anomaly(True) names the "
                 "operation that made it")


def source_title(source: str) -> str:
    return SOURCE_TITLES.get(source, source.replace("_", " "))


def stage_title(stage: Optional[str]) -> str:
    return STAGE_TITLES.get(stage or "", stage or "unknown stage")


def step_label(step: Optional[int]) -> str:
    """Steps count from 0, as in determinism.json; ``None`` is the state before training."""
    return "init" if step is None else f"step {step}"


def determinism_headline(result: DeterminismResult) -> tuple[str, str]:
    """``(status, title)``: status is ``pass``, ``fail`` or ``error`` (a crash before any
    divergence was seen; a divergence found before a crash is still a ``fail``)."""
    if result.error:
        if result.verdict == "nondeterministic":
            return "fail", "Nondeterministic (a run crashed; partial result)"
        return "error", "Incomplete: a run crashed"
    if result.verdict == "deterministic":
        problem = distributed_problem(result)
        return ("fail", f"Deterministic, but {problem}") if problem else ("pass", "Deterministic")
    return "fail", "Nondeterministic"


#: What became of an escape's generators, as the reports say it.
ESCAPE_USE = {"drawn": "drawn from",
              "unused": "never drawn from: nothing to fix",
              "reseeded": "reseeded before its first draw: nothing to fix"}


def listed_escapes(result: DeterminismResult) -> list[RngEscape]:
    """The generators the seed does not reach that the escapes table lists: when the runs
    agreed, those drawn from are latent sources (listed there, once), so only the others."""
    if result.verdict == "deterministic" and result.latent_sources:
        return [e for e in result.rng_escapes if not e.drawn]
    return list(result.rng_escapes)


def steps_made(result: DeterminismResult) -> int:
    """The steps every run made (what was compared): fewer than asked when the script ended
    or crashed sooner."""
    made = [r.steps_completed for r in result.run_info]
    return min(made) if made else result.steps


def steps_text(result: DeterminismResult) -> str:
    """``8 steps``, or ``8 steps (of 20 asked)`` when the runs made fewer than asked."""
    made = steps_made(result)
    text = f"{made} step{'s' if made != 1 else ''}"
    return text if made >= result.steps else f"{text} (of {result.steps} asked)"


#: Why a cell of the timeline shows what it shows, where a cross alone would not say it.
CELL_NOTES = {
    "latent": "the RNG state differs, but nothing computed from it differs at this step",
    "outside": "parameters changed outside the optimizer, after this step's update",
    "carried": "carried forward from the first divergence",
}


def cell_note(result: DeterminismResult, step: Optional[int], stage: str, cells: dict[str, Any]) -> Optional[str]:
    """The :data:`CELL_NOTES` key for a differing cell, or None."""
    if cells.get(stage) != "differ" or step is None:
        return None
    div = result.first_divergence
    others = ("data", "forward", "backward", "optimizer")
    if stage == "rng" and all(cells.get(k) != "differ" for k in others):
        return "latent"
    if div is None or div.step is None:
        return "carried" if div is not None else None
    if step == div.step and stage == div.stage:
        return "outside" if "outside_optimizer" in (result.detail or {}) else None
    return "carried" if step >= div.step else None


def determinism_sentence(result: DeterminismResult) -> str:
    """One sentence that says what happened."""
    div = result.first_divergence
    runs = f"{result.runs} run{'s' if result.runs != 1 else ''}"
    steps = steps_text(result)
    if div is None:
        if result.error:
            agreed = [row["step"] for row in timeline_rows(result) if row["step"] is not None
                      and all(c in ("agree", "") for c in row["cells"])]
            last = None
            for n, step in enumerate(sorted(agreed)):
                if step != n:
                    break
                last = step
            if last is not None:
                return (f"The runs agree bit for bit through step {last}, but the audit could "
                        "not finish: a run crashed. What was measured is below.")
            return (f"The audit could not finish, so it cannot tell whether the {runs} agree; "
                    "what was measured before the crash is below.")
        seeded = "under the script's own seeding" if result.mode == "script" else f"with seed {result.seed}"
        return (f"{runs.capitalize()} of {steps} {seeded} agree bit for bit: "
                "every batch, gradient and parameter is identical.")
    where = "before the first step" if div.step is None or div.stage == "init" \
        else f"at step {div.step}"
    text = f"The runs first part {where}, in the {stage_title(div.stage)}"
    if div.module:
        text += f" of {one_line(div.module)}"
    if div.max_abs_diff is not None:
        text += f" (max |diff| {fmt_num(div.max_abs_diff)})"
    text += "."
    if result.causes:
        cause = result.causes[0]
        text += (f" Most likely cause: {source_title(cause.source).lower()}"
                 f" ({'confirmed' if cause.confirmed else 'not confirmed'}).")
    return text


def timeline_rows(result: DeterminismResult) -> list[dict[str, Any]]:
    """The step x stage grid: one row per step (the init row first), each with the state of
    each contract stage (``agree``, ``differ``, ``missing`` or ``""`` when not applicable)."""
    rows = []
    for entry in result.timeline:
        stages = entry.stages or {}
        cells = []
        for stage in STAGES:
            state = stages.get(stage)
            if state is None:
                state = "" if (entry.step is None) != (stage == "init") else "missing"
            cells.append(str(state))
        notes = [cell_note(result, entry.step, stage, stages) for stage in STAGES]
        rows.append({"step": entry.step, "label": step_label(entry.step), "cells": cells,
                     "notes": notes})
    rows.sort(key=lambda r: -1 if r["step"] is None else r["step"])
    return rows


# --------------------------------------------------------------------------- init

FINDING_TITLES = {
    "vanishing_gradients": "Vanishing gradients",
    "exploding_gradients": "Exploding gradients",
    "vanishing_activations": "Vanishing activations",
    "exploding_activations": "Exploding activations",
    "dead_units": "Dead units",
    "saturation": "Saturated units",
    "nonfinite": "Non-finite values",
}

#: What to do about each kind of finding.
FINDING_ADVICE = {
    "vanishing_gradients": "Gradients shrink towards the input, so early layers barely learn. "
        "Use an init whose gain matches the nonlinearity (Kaiming for ReLU, Xavier for tanh), "
        "or add normalization layers or residual connections.",
    "exploding_gradients": "Gradients grow towards the input and make training unstable. "
        "Scale the initial weights down (smaller gain or std), add normalization, "
        "or clip gradients with torch.nn.utils.clip_grad_norm_.",
    "vanishing_activations": "The forward signal shrinks layer by layer, so deep layers see "
        "almost nothing. Use Kaiming init for ReLU layers (gain sqrt(2)) or LSUV, or add "
        "normalization layers that restore the variance.",
    "exploding_activations": "The forward signal grows layer by layer. Lower the init std or "
        "gain (Xavier/Kaiming instead of a large fixed std) or add normalization layers.",
    "dead_units": "These ReLU units output zero for the whole batch and get no gradient. "
        "Use Kaiming init with zero biases, lower the learning rate, or switch to "
        "LeakyReLU/GELU.",
    "saturation": "These tanh/sigmoid units sit at their bounds where the slope is almost "
        "zero. Use Xavier init with the tanh/sigmoid gain, smaller weights, or normalize "
        "the inputs.",
    "nonfinite": "NaN or Inf appeared. Check the inputs and the loss, lower the init scale "
        "and the learning rate; torch.autograd.set_detect_anomaly(True) names the operation.",
}


def finding_title(kind: str) -> str:
    return FINDING_TITLES.get(kind, kind.replace("_", " ").capitalize())


def finding_advice(kind: str) -> str:
    return FINDING_ADVICE.get(kind, "")


def final_loss(scheme: SchemeResult) -> Optional[float]:
    """The last recorded loss; ``nan`` when training went non-finite, ``None`` when there is
    no loss at all."""
    if not scheme.loss:
        return None
    last = scheme.loss[-1]
    value = finite(last)
    return float("nan") if value is None else value


def seed_loss(scheme: SchemeResult) -> tuple[Optional[float], Optional[float], int]:
    """The median early loss over the scheme's init seeds, its std (``None`` for one seed)
    and the number of seeds; one seed: :func:`final_loss`."""
    curves = scheme.loss_seeds or []
    if len(curves) < 2:
        return final_loss(scheme), None, 1
    picked = [finite(c[-1]) if c else None for c in curves]
    values = sorted(v for v in picked if v is not None)
    if len(values) < len(picked):
        return float("nan"), None, len(curves)

    n, mean = len(values), sum(values) / len(values)
    median = (values[(n - 1) // 2] + values[n // 2]) / 2
    return median, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n


def fmt_spread(scheme: SchemeResult, missing: str = "") -> str:
    """``±0.012 (4)``: the early loss's std over the init seeds and their number."""
    _, std, n = seed_loss(scheme)
    return missing if std is None else f"±{fmt_num(std, 2)} ({n})"


def fmt_depth(scheme: SchemeResult, missing: str = "-") -> str:
    """``0.96/0.31``: the fitted end-to-end factors (last weight layer over first) of the
    output std and of the output-gradient norm."""
    trend = scheme.depth_trend
    if trend is None or (trend.activations is None and trend.gradients is None):
        return missing
    return "/".join("-" if finite(v) is None else f"{v:.3g}"
                    for v in (trend.activations, trend.gradients))


def diverged(scheme: SchemeResult) -> bool:
    return any(finite(v) is None for v in scheme.loss)


def init_headline(result: InitResult) -> tuple[str, str]:
    if result.error:
        return "error", "Incomplete: the init audit failed"
    if result.verdict == "healthy":
        return "pass", "The model's own init is healthy"
    return "fail", "The model's own init is unhealthy"


def ordered_schemes(result: InitResult) -> list[SchemeResult]:
    """The default scheme first, then the recommended one, then the rest as measured."""
    first = [s for s in result.schemes if s.name == "default"]
    second = [s for s in result.schemes if s.name == result.recommended and s.name != "default"]
    rest = [s for s in result.schemes if s not in first and s not in second]
    return first + second + rest


def unique(items: Iterable[Any]) -> list[Any]:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def finding_numbers(finding: Finding) -> str:
    """`` (value X, threshold Y)`` for a finding, or ``""`` when it carries neither."""
    numbers = []
    if finding.value is not None:
        numbers.append(f"value {fmt_num(finding.value)}")
    if finding.threshold is not None:
        numbers.append(f"threshold {fmt_num(finding.threshold)}")
    return f" ({', '.join(numbers)})" if numbers else ""


# --------------------------------------------------------------------------- variance, compare

SOURCE_MEANING = {
    "init": "parameter initialization",
    "data": "sampling order / shuffling",
    "augment": "random transforms (main process and DataLoader workers)",
    "dropout": "dropout and other randomness during training steps",
    "all": "every source varied together",
}
COMPARE_TITLES = {"better": "Better", "worse": "Worse", "no_difference": "No detectable difference"}


def direction_words(direction: str) -> str:
    return "lower is better" if direction == "lower" else "higher is better"


def variance_headline(result: VarianceResult) -> tuple[str, str]:
    """``(status, title)`` of a variance result: pass / fail (randomness no seed reaches) /
    error."""
    if result.error:
        return "error", "Runs crashed" if result.metrics else "Variance not measured"
    if result.controlled is False:
        return "fail", "Randomness no seed reaches"
    return "pass", "Seed variance measured"


def compare_headline(result: CompareResult) -> tuple[str, str]:
    """``(status, title)`` of a comparison: fail when the candidate is significantly worse."""
    if result.error:
        return "error", "Runs crashed" if len(result.deltas) >= 2 else "Comparison not made"
    status = "fail" if result.verdict == "worse" else "pass"
    return status, COMPARE_TITLES.get(result.verdict, result.verdict)


def variance_sentence(result: VarianceResult, metric: str) -> str:
    """The recommendation in words for one metric: which source dominates and how large a
    change must be to stand out of seed noise."""
    mv = result.metrics.get(metric)
    if mv is None or "all" not in mv.sources or mv.sources["all"].std is None:
        return f"No run gave a value of {metric}."
    total = mv.sources["all"].std
    if total == 0:
        return (f"{metric} came out identical on every seed: seed noise does not move it "
                "(within these steps).")
    top = result.dominant.get(metric)
    text = ""
    if top:
        st = mv.sources[top]
        text = (f"{top} moves {metric} most (std {fmt_num(st.std)}, "
                f"{fmt_percent(st.share)} of the all-sources variance). ")
    return text + (f"A single run's {metric} varies by {fmt_num(total)} (std) from seed to seed: "
                   f"a tuning change smaller than about {fmt_num(2 * total)} cannot be told "
                   "from seed noise by one run each; compare variants on paired seeds with "
                   "`audit compare`.")


def compare_sentence(result: CompareResult) -> str:
    """The verdict and the recommendation of a comparison, in words."""
    if result.error and len(result.deltas) < 2:
        return result.error
    n, metric = len(result.deltas), result.metric
    if not result.deltas:
        side = "candidate" if result.verdict == "worse" else "baseline"
        return f"Every {side} run failed to give a finite {metric}; the other side did."
    numbers = (f"mean change {fmt_num(result.mean_delta)} "
               f"({int(result.confidence * 100)}% CI {fmt_num(result.ci[0])} to "
               f"{fmt_num(result.ci[1])}), p = {fmt_num(result.p_value)}")
    if result.verdict in ("better", "worse"):
        return (f"The candidate is {result.verdict} than the baseline on {metric} beyond seed "
                f"noise over {n} paired seeds: {numbers}; it wins "
                f"{fmt_percent(result.prob_improvement)} of seed pairs, an effect of "
                f"{fmt_num(abs(result.effect_size or 0))} seed std.")
    if all(d == 0 for d in result.deltas):
        return f"Both variants gave exactly the same {metric} on all {n} seeds."
    text = f"No detectable difference on {metric} over {n} paired seeds: {numbers}. "
    if result.min_seeds and n < result.min_seeds:
        text += (f"With fewer than {result.min_seeds} seeds the test cannot reach "
                 f"p < {fmt_num(result.alpha)} at all. ")
    if result.seeds_needed is None:
        return text + "The observed difference is too small to detect with any practical number of seeds."
    if result.seeds_needed > n:
        return text + (f"To detect a difference this size with 80% power, rerun with about "
                       f"{result.seeds_needed} seeds.")
    return text + (f"A difference this size should be detectable with {result.seeds_needed} "
                   "seeds; this one did not reach significance, so treat it as noise.")

# --------------------------------------------------------------------------- resume

RESUME_SOURCE_TITLES = {
    "rng_state": "RNG state not restored",
    "data_position": "The data loader restarts or replays its epoch",
    "worker_rng": "DataLoader worker seeds drawn anew",
    "scheduler": "LR scheduler not saved",
    "optimizer_state": "Optimizer state not saved",
    "grad_scaler": "Grad scaler not saved",
    "buffers": "Module buffers not saved",
    "unknown": "Unknown cause",
}

RESUME_STAGE_MEANING = {
    "state": "the state right after the load (parameters, buffers, optimizer, scheduler, grad "
             "scaler) differs from the uninterrupted run's after step K-1",
    **{k: v for k, v in STAGE_MEANING.items() if k != "init"},
}

RESUME_STAGES_SHOWN = ("state", "data", "rng", "forward", "backward", "optimizer")


def resume_notes(result: ResumeResult) -> list[str]:
    """The result's notes (``detail``) as sentences."""
    notes = []
    for key, value in (result.detail or {}).items():
        if key == "rng_streams":
            notes.append("Generators that differ where the runs part: " + ", ".join(map(str, value)) + ".")
        elif key == "data_difference":
            notes.append("The batches differ in " + ("order: the same samples arrive in another order."
                                                     if value == "order" else "content."))
        else:
            notes.append(one_line(value))
    return notes


def resume_source_title(source: str) -> str:
    return RESUME_SOURCE_TITLES.get(source, source.replace("_", " "))


def resume_headline(result: ResumeResult) -> tuple[str, str]:
    """``(status, title)`` of a resume result: ``pass``, ``fail`` or ``error``."""
    if result.error:
        return "error", "Incomplete: a run did not finish"
    return {"equivalent": ("pass", "Resume reproduces the run"),
            "diverges": ("fail", "The resumed run diverges"),
            "nondeterministic": ("fail", "Not reproducible even without a restart")}.get(
                result.verdict, ("fail", result.verdict))


def resume_sentence(result: ResumeResult) -> str:
    """One sentence that says what happened."""
    saved = "its own save/load" if result.checkpoint == "target" else \
        "the default checkpoint (model and optimizer state dicts)"
    if result.error:
        return "The audit could not finish; what was measured is below."
    if result.verdict == "equivalent":
        return (f"Stopped after step {result.at - 1}, saved with {saved}, loaded in a fresh process "
                f"and continued to step {result.steps - 1}, the run matches the uninterrupted "
                "one bit for bit.")
    if result.verdict == "nondeterministic":
        return ("Two uninterrupted runs already differ, so the checkpoint cannot be judged; "
                "run `audit determinism` first.")
    div = result.first_divergence
    assert div is not None  # neither equivalent nor nondeterministic: the runs part
    where = "right after the load" if div.stage == "state" else \
        f"at step {div.step}, in the {stage_title(div.stage)}"
    text = f"Resumed at step {result.at} with {saved}, the run parts from the uninterrupted one {where}"
    if div.tensor:
        text += f" ({one_line(div.tensor)})"
    text += "."
    confirmed = [c for c in result.causes if c.confirmed]
    if confirmed:
        names = ", ".join(resume_source_title(c.source).lower() for c in confirmed)
        text += f" Proven cause: {names}."
    return text

# --------------------------------------------------------------------------- diff

#: What each diff stage means (the determinism stages, plus ``loss``).
DIFF_STAGE_MEANING = {
    **STAGE_MEANING,
    "forward": "a module's output differs although its inputs, parameters and RNG state agree",
    "loss": "every module's output agrees, but the loss differs",
}
DIFF_STAGE_TITLES = {**STAGE_TITLES, "loss": "loss"}
DIFF_TIMELINE_STAGES = ("init", "data", "rng", "forward", "loss", "backward", "optimizer")
DRIFT_WORDS = {
    "rounding": "stays at rounding level over the run",
    "material": "grows to a material difference",
}


def diff_headline(result: DiffResult) -> tuple[str, str]:
    """``(status, title)`` of a diff: ``pass`` identical, ``fail`` differs or a side is
    nondeterministic, ``error`` a side crashed before any difference."""
    if result.error and result.first_difference is None:
        return "error", "Incomplete: a side crashed"
    if result.verdict == "identical":
        return "pass", "Identical"
    if result.verdict == "nondeterministic":
        return "fail", "Nondeterministic: a side disagrees with itself"
    return "fail", "The numbers differ"


def diff_where(result: DiffResult) -> str:
    """``at step 3, in the forward pass of mix`` (side b's name, side a's beside it)."""
    d = result.first_difference
    if d is None:
        return ""
    text = "before the first step" if d.step is None else f"at step {d.step}"
    text += f", in the {DIFF_STAGE_TITLES.get(d.stage, d.stage)}"
    if d.module:
        text += f" of {one_line(d.module)}"
        if d.module_a and d.module_a != d.module:
            text += f" (a: {one_line(d.module_a)})"
    return text


def _setting(value: Any) -> str:
    return "not set" if value is None else one_line(value)


def environment_reason(result: DiffResult) -> str:
    """When the code is the same on both sides but the numbers differ (``likely_reason``
    ``environment``): one sentence naming what changed in the environment, else ""."""
    if result.likely_reason != "environment":
        return ""
    changes = result.environment_changes
    if not changes:
        return ("The code is the same on both sides and no recorded environment key changed: "
                "the likely reason is what the audit does not record (the CPU's instruction "
                "set, how a library was built).")
    named = "; ".join(f"{one_line(c.key)} {_setting(c.a)} -> {_setting(c.b)}" for c in changes[:4])
    more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
    return f"The code is the same on both sides: the environment is the likely reason ({named}{more})."


def diff_sentence(result: DiffResult) -> str:
    """One sentence that says what happened (and, for the same code, why: the environment)."""
    against = "the reference" if result.mode == "against" else "side a"
    if result.first_difference is None:
        if result.error:
            return "The comparison could not finish: a side crashed. What was measured is below."
        renamed = f" ({len(result.renamed)} module(s) matched under new names)" if result.renamed else ""
        return (f"Side b trains bit for bit as {against} over {result.steps} steps with seed "
                f"{result.seed}: every batch, loss, gradient and parameter agrees{renamed}.")
    d = result.first_difference
    text = f"Side b first parts from {against} {diff_where(result)}"
    if d.max_abs_diff is not None:
        text += f" (max |diff| {fmt_num(d.max_abs_diff)})"
    text += "."
    if result.verdict == "nondeterministic" and result.self_difference is not None:
        s = result.self_difference
        when = "before the first step" if s.step is None else f"at step {s.step}"
        text += (f" But side {s.side} disagrees with its own rerun {when} "
                 f"({s.stage}), so the difference is not the change's alone: run "
                 "'audit determinism' on it first.")
    elif result.drift in DRIFT_WORDS:
        text += f" The difference {DRIFT_WORDS[result.drift]}"
        if result.loss.max_rel_diff is not None:
            text += f" (largest relative loss difference {fmt_num(result.loss.max_rel_diff)})"
        text += "."
    reason = environment_reason(result)
    return f"{text} {reason}" if reason else text


def diff_timeline_rows(result: DiffResult) -> list[dict[str, Any]]:
    """The step x stage grid of a diff, as :func:`timeline_rows`, with the ``loss`` column;
    ``first_col`` marks the first difference."""
    rows = []
    d = result.first_difference
    for entry in result.timeline:
        stages = entry.stages or {}
        cells = []
        for stage in DIFF_TIMELINE_STAGES:
            state = stages.get(stage)
            if state is None:
                state = "" if (entry.step is None) != (stage == "init") else "missing"
            cells.append(str(state))
        first = None
        if d is not None and ((d.stage == "init" and entry.step is None)
                              or (d.stage != "init" and entry.step == d.step)):
            first = DIFF_TIMELINE_STAGES.index(d.stage) if d.stage in DIFF_TIMELINE_STAGES else None
        rows.append({"step": entry.step, "label": step_label(entry.step), "cells": cells,
                     "first_col": first, "first": first is not None})
    rows.sort(key=lambda r: -1 if r["step"] is None else r["step"])
    return rows


def record_headline(result: RecordResult) -> tuple[str, str]:
    """``(status, title)`` of ``audit record``."""
    if result.verdict == "recorded":
        return "pass", "Recorded"
    return "fail", "Refused: the target disagrees with itself"


def record_sentence(result: RecordResult) -> str:
    """One sentence: what was recorded where, or why nothing was."""
    if result.verdict == "recorded":
        size = f" ({result.size_bytes / 1024:.1f} KiB)" if result.size_bytes is not None else ""
        where = f" to {one_line(result.path)}{size}" if result.path else ""
        return (f"Two runs of {one_line(result.target)} ({result.steps} steps, seed {result.seed}, "
                f"device {one_line(result.device)}) agree bit for bit; the reference was "
                f"written{where}.")
    s = result.self_difference
    when = "" if s is None else (" before the first step" if s.step is None else f" at step {s.step}")
    stage = "" if s is None else f" ({s.stage})"
    return (f"Two runs of {one_line(result.target)} differ{when}{stage}, so a reference of it "
            "would not be reproducible; nothing was written. Run 'audit determinism' on it first.")
