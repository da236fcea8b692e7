"""Typed settings, merged once: a kind's defaults < ``[tool.audit]`` < flags."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from audit import config, registry
from audit.kinds.base import COMMON_KEYS, AuditKind, Settings
from audit.probes.run import executors


def load_config(path: Optional[str] = None, start: Optional[str] = None) -> config.Config:
    """``[tool.audit]`` with every audit's table checked (``path``: ``--config``)."""
    return config.load(registry.tables(), path, start)


def resolve(kind: AuditKind, cfg: config.Config, flags: Optional[dict[str, Any]] = None) -> Settings:
    """The kind's settings: its defaults, then the config's common keys and its table, then
    every flag that was given (``None`` means not given)."""
    fields = {f.name for f in dataclasses.fields(kind.settings)}
    values: dict[str, Any] = {k: v for k, v in cfg.common.items() if k in COMMON_KEYS}
    values.update(cfg.section(kind.name))
    values.update({k: v for k, v in (flags or {}).items() if v is not None and k in fields})
    values["config_path"] = cfg.path
    settings = kind.settings(**{k: v for k, v in values.items() if k in fields})
    executors.require(settings.executor)  # a missing Ray: one line, before any training
    return settings
