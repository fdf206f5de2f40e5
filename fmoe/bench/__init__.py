"""Benchmarks behind `fmoe bench NAME`: each reports a ratio measured within one run (results in bench/results/)."""
