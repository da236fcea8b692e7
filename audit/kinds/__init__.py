"""The audit kinds: one module per audit, each defining its settings, how it runs, its checks,
its baseline snapshot and its reporters; audit.registry lists them."""
