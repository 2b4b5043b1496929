"""User-facing errors: the CLI prints these as one line and exits 2, no traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, wrong folder).

    The message must say what is wrong and what to do about it.
    """

    exit_code = 2


def one_line(message: object) -> str:
    """`message` as one line of plain text, whatever a path in it holds (a newline, a
    terminal escape): each character that does not print is written as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(message))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries raise pages), or its type if it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
