"""Errors caused by the user's input. The CLI prints them as one line and exits with code 2."""


class DamocError(Exception):
    """Bad input (config, data, paths): the message says what is wrong and where."""


class ConfigError(DamocError):
    """A run config that cannot be read or does not validate."""


class DataError(DamocError):
    """A dataset that cannot be found, read or converted into canonical records."""
