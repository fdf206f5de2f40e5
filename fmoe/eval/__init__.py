"""`fmoe eval`: suites (suite.py), runs through the agent (run.py), reports (report.py) and BFCL (bfcl.py).
See docs/reference/eval-metrics.md."""
