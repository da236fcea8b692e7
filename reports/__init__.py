"""reports: renders :mod:`probes.results` as terminal text, JSON, HTML, JUnit XML and markdown.
One module per format; nothing here imports the measuring code."""
