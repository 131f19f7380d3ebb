"""A fifth model family, written entirely under tests/ the way docs/adding-a-family.md says:
one spec file (spec.py) plus two model files (mlx_model.py, torch_model.py) and a config.
tests/test_fifth_family.py proves it gets the engine, resume, parity, the planner and the
bench with no edit under shared/, mlx_models/, torch_models/ or bench/."""
