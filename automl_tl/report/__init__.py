"""report: what a fit leaves and says. The run folder (locked while a fit runs, replaced only
by a finished run), metrics.json, the JSON files and report.html (one self-contained page),
and the summary the CLI prints.

May import: core, data, features, train, decide, export.
"""
