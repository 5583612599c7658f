"""The one error type a user sees: its message is a single line naming the file, row or key."""


class EmoganError(Exception):
    """Bad input or an impossible setting. The CLI prints the message and exits non-zero."""
