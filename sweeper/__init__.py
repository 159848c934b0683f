"""Learning-rate sweeps (sweep.py's machinery): config, points, runner, stats, report, W&B export."""
