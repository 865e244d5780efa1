"""The one base class of every error caused by the user's input (config, files, question sets, adapters,
servers): the CLI prints its message and exits 2; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input; the message names the file:line or config key and what was expected."""
