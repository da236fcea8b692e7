"""probes: the measuring library. Runs, hooks, fingerprints, comparisons, init schemes,
statistics and diagnoses; returns the dataclasses of :mod:`probes.results` and never prints,
parses argv or writes report files."""
