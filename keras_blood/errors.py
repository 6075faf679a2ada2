"""Errors a user can fix. The command-line tools print them as one line and exit 2."""


class KerasBloodError(Exception):
    """Base class: the message says what was wrong and how to fix it."""


class ConfigError(KerasBloodError):
    """A config file, key or value is invalid."""


class DataError(KerasBloodError):
    """Data is missing, unreachable or malformed."""


class ExportError(KerasBloodError):
    """A model cannot be exported or loaded."""
