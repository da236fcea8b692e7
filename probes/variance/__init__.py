"""audit variance and audit compare: how far each source of randomness moves the result, and
whether a change beats seed noise."""
