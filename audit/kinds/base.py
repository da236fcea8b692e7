"""What every audit kind provides, and the settings every audit shares.

An :class:`AuditKind` is the one object the CLI, ``audit check``, baselines, the pytest plugin,
the Python API and the reports loop over; a new audit is an engine package under ``probes/``
plus one kind module here and its line in :mod:`audit.registry`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from audit.probes.progress import Reporter
from audit.probes.results import Check
from audit.probes.run.processes import DEFAULT_TIMEOUT

#: One regression against a baseline: its text and, when known, the place (file:line).
Regression = tuple[str, Optional[str]]


@dataclass
class Settings:
    """Settings every audit shares: defaults < ``[tool.audit]`` < flags, merged once by
    :func:`audit.settings.resolve`. Each kind subclasses it with its own fields."""

    target: Any = None  # "file.py:NAME[,k=v]" / "pkg.mod:NAME"; None: the built-in example
    seed: int = 0
    device: str = "auto"
    out: str = "audit-report"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    timeout: float = DEFAULT_TIMEOUT  # seconds a run may go without a training step
    script: Optional[list[str]] = None  # script mode: the command after "--"
    cwd: str = field(default_factory=os.getcwd)
    executor: str = "local"  # where fresh runs execute: local, or ray
    ray_address: Optional[str] = None  # the Ray cluster to join (None: Ray on this machine)
    tolerances: dict[str, Any] = field(default_factory=dict)  # baseline tolerances the config sets
    config_path: Optional[str] = None

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    @property
    def target_label(self) -> str:
        from audit.probes.run.target import label

        return label(self.target if isinstance(self.target, str) else None)


#: Keys of ``[tool.audit]`` (the common table) that are settings, not gate options.
COMMON_KEYS = ("target", "seed", "device", "out", "input_shape", "num_classes", "timeout",
               "executor", "ray_address")


def _no_annotations(check: Check, result: Any) -> list[Check]:
    return [check]


def _out_folder(s: "Settings") -> str:
    return s.out


@dataclass(frozen=True)
class AuditKind:
    """One audit: its settings, flags and config table, how it runs, its checks, its baseline
    snapshot and regressions, and its reporters."""

    name: str
    help: str
    settings: type  # a Settings subclass with this kind's defaults
    add_arguments: Callable[[argparse.ArgumentParser], None]  # the kind's own flags
    check_table: Callable[[Any, dict[str, Any]], dict[str, Any]]  # (config checker, [tool.audit.NAME]) -> settings
    tolerances: Mapping[str, float]  # baseline tolerances and their defaults
    run: Callable[[Any, Reporter], Any]  # the engine, on the kind's own Settings; raises UsageError for bad input
    checks: Callable[[Any], list[Check]]  # result -> its checks
    snapshot: Callable[[Any], dict[str, Any]]  # result -> what a baseline keeps
    regressions: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], list[Regression]]  # (base, now, tolerances)
    headline: Callable[[Any], tuple[str, str]]  # result -> (status, title)
    verdict_detail: Callable[[Any], str]  # result -> the rest of the one-line verdict
    summary: Callable[..., str]  # (result, report_path) -> terminal text
    html: Callable[[Any], str]  # result -> the self-contained HTML report
    result_type: type  # the engine's result dataclass
    index: Callable[[Any], tuple[Any, ...]]  # result -> (text, note_label, note_code) for index/summary
    script_mode: bool = False  # accepts "-- python train.py ..."
    launchers: bool = False  # accepts "-- torchrun ... train.py" too (the ranks started by the audit)
    in_process: bool = False  # the Python API may pass objects (modules, callables)
    checked_by_default: bool = False  # `audit check` runs it when `audits` is not set
    annotations: Callable[[Check, Any], list[Check]] = _no_annotations  # a failed check per place
    # Where the report files go (``audit record``'s --out names the reference file instead).
    report_folder: Callable[[Settings], str] = _out_folder
    # What a baseline file's snapshot must hold, checked when the file is read (before any
    # run): field -> (test, what it must be), see :mod:`audit.kinds.snapshot_shape`.
    snapshot_rules: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def failing(self, result: Any) -> list[Any]:
        return [c for c in self.checks(result) if not c.passed and not c.skipped]


# --------------------------------------------------------------------------- small shared helpers


def at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer of ``minimum`` or more (``why`` says what for)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {minimum} or more{why}")
        return value
    return parse


positive_arg = at_least(1)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def rounded(value: Any) -> Optional[float]:
    """A finite number to 4 significant digits (baselines stay stable), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return float(f"{number:.4g}") if math.isfinite(number) else None


def failing_names(checks: list[Check]) -> list[Any]:
    return sorted({c.name for c in checks if not c.passed and not c.skipped})
