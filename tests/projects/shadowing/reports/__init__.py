"""The user's own `reports` package: the audit must not shadow it."""
OWNER = "user"
