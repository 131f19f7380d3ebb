"""Each family's hyperparameters as a frozen dataclass, its parameter manifest (names, shapes,
layout kinds), initial weights and counts; base.py holds the layout kinds. The families
themselves are registered in shared/families/ (shared/registry.py)."""
