"""The one exception sdlab raises for bad input: its message is one line that says what
was wrong and what to do."""


class SdlabError(Exception):
    """Bad input or an unusable model. `str(err)` is a one-line message for the user."""
