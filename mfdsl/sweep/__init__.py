"""Sweeps: train every candidate spec of a folder on a short schedule, shared by workers
through one Optuna study, and read the results as an error EDF (docs/spaces.md, "Sweeps")."""
