"""User-facing errors: one sentence a user can act on, shown without a traceback."""


class FlareError(ValueError):
    """An error caused by the user's input (a bad path, file, argument or setting).

    The message is a complete sentence that says what is wrong and what to do.
    The CLI prints it on one line; the dashboard shows it with ``st.error``.
    """


class DataError(FlareError):
    """A dataset could not be loaded or does not fit what was asked."""


class ModelError(FlareError):
    """A model file could not be loaded safely or does not fit the data."""
