"""Benchmarks: measured side by side in one process tree, reported as ratios."""
