"""Benchmarks (`./run bench` = `python -m bench`): speed against peers, printed as ratios."""
