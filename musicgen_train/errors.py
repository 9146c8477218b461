"""Errors meant for the user: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Something the user can fix: a bad config value, a missing file, a missing checkpoint."""


class ConfigError(UserError):
    """A config key holds a value that is not allowed; the message names key, value and choices."""


class ModelNotFoundError(UserError):
    """A model that cannot be found or loaded; the message is one line meant for the user."""
