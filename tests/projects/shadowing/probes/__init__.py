"""The user's own `probes` package: the audit must not shadow it."""
OWNER = "user"
