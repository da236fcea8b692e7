"""The reference file ``audit record`` writes and ``audit diff --against`` reads.

One self-contained JSON document, meant to be committed beside the code: what was trained
(target or script command, steps, seed, device), the environment, the loss of each step and
the detail trace (fingerprints of every step's batch, RNG states, loss, gradients, parameters
and every module call). Its format does not depend on its file name. A reader refuses, with
one line, a file that is missing, not JSON, not a reference, or written by a newer schema.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from audit.probes.errors import UsageError

KIND = "audit.reference"
VERSION = 1
SCHEMA = f"{KIND}/{VERSION}"
_REQUIRED = ("target", "steps", "seed", "device", "records")


@dataclass
class Reference:
    target: str  # the target spec, or the script command joined by spaces
    steps: int
    seed: int
    device: str
    records: list[dict[str, Any]]  # the trace of one detail run (probes.run.trace records)
    environment: dict[str, Any] = field(default_factory=dict)
    losses: list[Any] = field(default_factory=list)
    mode: str = "target"  # "target" | "script"
    script: Optional[list[str]] = None  # script mode: the command after "--"
    input_shape: Optional[list[Any]] = None
    num_classes: Optional[int] = None
    schema: str = SCHEMA


def dumps(ref: Reference) -> str:
    """The file's text: the header fields, then one trace record per line."""
    head = {k: v for k, v in asdict(ref).items() if k != "records"}
    head = {"schema": head.pop("schema"), **head}
    lines = [json.dumps(r, separators=(",", ":"), sort_keys=True) for r in ref.records]
    body = json.dumps(head, indent=1, sort_keys=False)[:-2]
    return body + ',\n "records": [\n' + ",\n".join(lines) + "\n ]\n}\n"


def save(ref: Reference, path: str) -> int:
    """Write the file atomically (a half-written reference never replaces a good one);
    returns its size in bytes."""
    text = dumps(ref)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".audit-reference-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return len(text.encode("utf-8"))


def _refuse(path: str, why: str) -> UsageError:
    return UsageError(f"{path}: {why}")


def load(path: str) -> Reference:
    """Read a reference file; raises :class:`UsageError` with one line when it cannot."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise _refuse(path, "no such reference file; write one with 'audit record --out FILE'") from None
    except IsADirectoryError:
        raise _refuse(path, "is a folder, not a reference file written by 'audit record'") from None
    except (ValueError, UnicodeDecodeError):
        raise _refuse(path, "not a readable reference (not JSON: truncated or corrupt?); "
                            "record it again with 'audit record'") from None
    except OSError as exc:
        raise _refuse(path, f"cannot be read ({exc.strerror}); check the path and its permissions") from None
    return from_data(data, path)


def from_data(data: Any, path: str) -> Reference:
    schema = data.get("schema") if isinstance(data, dict) else None
    kind, _, version = str(schema).partition("/")
    if kind != KIND:
        raise _refuse(path, f"not an audit reference file (schema {schema!r}, expected {SCHEMA!r}); "
                            "give a file written by 'audit record'")
    if not version.isdigit():
        raise _refuse(path, f"unknown reference schema {schema!r}; record it again with 'audit record'")
    if int(version) > VERSION:
        raise _refuse(path, f"recorded by a newer audit (schema {schema}, this audit reads up to "
                            f"{SCHEMA}); upgrade audit to compare against it")
    missing = [k for k in _REQUIRED if k not in data]
    if missing or not isinstance(data.get("records"), list):
        raise _refuse(path, f"a damaged reference (missing {', '.join(missing) or 'records'}); "
                            "record it again with 'audit record'")
    names = set(Reference.__dataclass_fields__)
    return Reference(**{k: v for k, v in data.items() if k in names})
