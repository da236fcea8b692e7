"""The init engine: schemes applied in place, per-layer flow statistics, diagnosis and
recommendation."""
