"""The four families that ship. Each module here registers one family (shared/registry.py):
its spec, data, task, random batches, memory model and the two backends' model classes.
docs/adding-a-family.md shows the same for a family of your own."""
