"""The one exception type a user can cause; the CLI prints its message as a single line."""


class CharLSTMError(Exception):
    """Bad input or an impossible request: the message says what was wrong and what to do."""
