"""probes: the measuring library, installed as ``audit.probes``. Rooms: ``results`` (the
result model), ``run`` (running training in fresh processes), ``script`` (observing an
unmodified script), one package per engine (``determinism``, ``init``, ``resume``,
``variance``, ``diff``) and ``child`` (the entry points of fresh processes). Engines return the
dataclasses of :mod:`audit.probes.results` and never print, parse argv or write report files."""
