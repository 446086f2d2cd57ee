"""Errors a user can cause.

Every subclass of :class:`SteerlabError` carries one line that says what is wrong and how to
fix it. The CLI prints that line and exits with status 2; anything else is a bug and keeps its
traceback.
"""


class SteerlabError(Exception):
    """A mistake in the user's input, files or settings (exit status 2 in the CLI)."""


class PairFileError(SteerlabError):
    """A pair-set file that cannot be read: malformed JSON, missing fields, duplicate ids."""


class ModelLoadError(SteerlabError):
    """A model that cannot be found, loaded or understood (unknown id, no blocks, ...)."""


class CacheError(SteerlabError):
    """An activation cache that is missing, incompatible, corrupt or already complete."""


class ConfigError(SteerlabError):
    """A settings file or option that is invalid."""
