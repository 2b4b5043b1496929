"""User-facing errors: the CLI prints these as one line and exits 2, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, wrong folder).

    The message must say what is wrong and what to do about it.
    """

    exit_code = 2
