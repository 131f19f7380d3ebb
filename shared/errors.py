"""The errors a user can cause, one class per kind of input. The CLIs print their message
as one line and exit 2 (shared/cli); anything else is a bug and keeps its traceback."""


class ConfigError(ValueError):
    """A config problem; the message is one line naming the key and the fix."""


class SpecError(ValueError):
    """A spec whose hyperparameters cannot build a model."""


class DataError(ValueError):
    """A data problem; the message names the file and the fix."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not match the model."""


class DependencyError(ValueError):
    """An optional dependency that a command needs is not installed; the message names
    what to install (the pip extra, a system package)."""


class StorageError(CheckpointError):
    """A write the disk refused (full, read-only, over quota); the message names the file
    and what was kept. A CheckpointError, so every command reports it as one line."""
