"""Observing an unmodified training script from inside its process: the tracer, module and
tensor names, data loading, random draws, ranks, ``mp.spawn`` children and ``torchrun``
command lines. Built on ``run``; imports no engine."""
