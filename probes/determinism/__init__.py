"""The determinism engine: traced runs compared step by step, the lockstep replay that names
the module, and the knobs that prove a cause."""
