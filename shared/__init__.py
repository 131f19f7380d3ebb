"""Framework-neutral layer: specs, manifests, configs, checkpoints, data, schedules.

Nothing in this package imports mlx.core, mlx.nn or torch (tests/test_shared_neutral.py
enforces it); arrays here are numpy.
"""
