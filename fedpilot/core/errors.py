"""User-facing errors: the CLI prints their message on one line and exits with their code."""


class FedpilotError(Exception):
    """A problem the user can fix (bad input, impossible request); never shown as a traceback."""

    exit_code = 2


class ConfigError(FedpilotError):
    """The configuration file is missing, unreadable or invalid."""
