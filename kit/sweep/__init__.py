"""Sweeps: many runs, each fold a job, on this machine (``LocalExecutor``) or a Ray cluster (``RayExecutor``).

``kit.sweep.spec`` reads the sweep file, ``kit.sweep.run.run_sweep`` runs it. This package's ``__init__`` imports
nothing: ``python -m kit.sweep.launch`` starts every job and must start fast.
"""
