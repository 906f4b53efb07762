"""Hydra finds sweepers in the ``hydra_plugins`` package: this one is trainer's race (trainer/sweeps/race.py)."""
