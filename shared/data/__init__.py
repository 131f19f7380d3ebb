"""Data pipelines. Everything yields numpy, so both backends see identical batches."""
