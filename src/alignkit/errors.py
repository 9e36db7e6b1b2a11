"""The errors a user can act on. The command line prints any of them as one line naming its source
(``alignkit train: error: data.jsonl line 7, field 'chosen': an empty string``); anything else that escapes
is a bug in alignkit and keeps its traceback.

They subclass `ValueError`, so code written against the earlier plain ``ValueError`` keeps working.
"""

from __future__ import annotations


class AlignkitError(ValueError):
    """A mistake in what the user gave alignkit (a config key, a file, a model, a run folder), or a state of the
    machine they can change (disk full, a folder in use); the message says what and where, and what to do."""


class ConfigError(AlignkitError):
    """A config key, value or file (a YAML file with its line, or the command line)."""


class DataError(AlignkitError):
    """A data source or one of its rows (file, row, field)."""


class ModelError(AlignkitError):
    """A model or tokenizer: not found (locally, in the cache, on the Hub), not loadable, or not usable as asked."""


class CheckpointError(AlignkitError):
    """A checkpoint that cannot be resumed (missing, corrupt, from another run's settings)."""


class RunDirError(AlignkitError):
    """An output folder: in use by another run, holding a finished run, not writable, or out of space."""
