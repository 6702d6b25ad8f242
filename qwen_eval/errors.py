"""The one error type users see: a single line that says what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input (file, field, option). The CLI prints the message on one line and exits 2."""
