"""The entry points a fresh process starts (``python -c LAUNCH audit.probes.child.NAME SPEC``):
``worker`` (a target), ``bootstrap`` (a script), ``variance`` (one plain run of variance or
compare) and ``init_scheme`` (one init scheme on a script). Engines name them by string only."""
