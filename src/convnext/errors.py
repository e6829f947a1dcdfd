"""Exceptions whose message is meant for the user as-is; the CLI prints them as one line."""


class UsageError(ValueError):
    """Bad input from the user (config, flag, path, file). The CLI exits with status 2."""


class CheckpointError(UsageError):
    """A weights/checkpoint file that cannot be used: corrupt, unsafe, or for another architecture."""
