"""The errors every part raises and the exit statuses the CLI turns them into. A leaf: it
imports nothing of the project, so engines, the gate and the face can all use it."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """``audit``'s exit statuses (the contract); only the CLI returns them."""

    OK = 0  # the audit passed
    FOUND = 1  # it found a problem
    USAGE = 2  # bad input: usage, config, a target that cannot load or crashes
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


class ChildExit(enum.IntEnum):
    """The exit status of a fresh run's process (``audit.probes.child``): the trace's or
    report's last record says what happened; the status says it again for whoever waits."""

    OK = 0  # the run ended as it should (or the script ended on its own)
    TARGET = 3  # the target could not be loaded or called (a usage error for the CLI)
    CRASH = 4  # training raised


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class ConfigError(UsageError):
    """A bad ``[tool.audit]`` table: one line naming the file, the key and what is expected."""


class TargetError(UsageError):
    """The target cannot be found, loaded, called or understood (exit status 2)."""
