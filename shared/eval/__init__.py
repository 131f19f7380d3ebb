"""Metrics users compare: separation (shared/eval/separation.py) and speech/text
(shared/eval/text.py)."""
