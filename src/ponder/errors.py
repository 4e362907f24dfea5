"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class PonderError(Exception):
    """Bad input or a failed precondition the user can fix (unknown option, missing file, ...)."""


def choice(name: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a one-line ``PonderError``."""
    choices = list(choices)
    if value not in choices:
        raise PonderError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}")
    return value
