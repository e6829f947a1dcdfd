"""Exceptions whose message is meant for the user as-is; the CLI prints them as one line."""


class UsageError(ValueError):
    """Bad input from the user (config, flag, path, file). The CLI exits with status 2."""


class CheckpointError(UsageError):
    """A weights/checkpoint file that cannot be used: corrupt, unsafe, or for another architecture."""


def check_choice(where: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raise UsageError("<where>=<value> is not valid; use one of ...") unless value is allowed."""
    if value not in allowed:
        raise UsageError(f"{where}={value!r} is not valid; use one of {', '.join(allowed)}")


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, cut to ``limit`` characters (its type name when it has no text)."""
    text = " ".join(str(e).split())
    return (text[:limit] + "...") if len(text) > limit else (text or type(e).__name__)
