"""Typed errors. Messages name the argument, what was expected and what was received."""


class TWGTMError(Exception):
    """Base class of every error raised by the twgtm library."""


class ConfigError(TWGTMError, ValueError):
    """A configuration value or file is invalid."""


class InputError(TWGTMError, ValueError):
    """An image, mask, category or option passed to the pipeline is invalid."""


class WeightsError(TWGTMError, RuntimeError):
    """A weights file or directory is missing, unreadable, or does not match the model."""


class MissingFileError(WeightsError, FileNotFoundError):
    """A required model file is absent; the message says what to place where."""


class NumericalError(TWGTMError, RuntimeError):
    """A computation produced non-finite values (NaN or inf); nothing is returned."""
