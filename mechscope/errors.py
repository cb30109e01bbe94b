"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class MechscopeError(Exception):
    """An error the user can cause and fix (bad name, bad input, missing artifact).

    Example:
        >>> raise MechscopeError("unknown model 'x'; known: gemma3-270m, smollm2-135m")
        Traceback (most recent call last):
        mechscope.errors.MechscopeError: unknown model 'x'; known: gemma3-270m, smollm2-135m
    """
