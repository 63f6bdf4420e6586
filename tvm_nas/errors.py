"""The one exception type that the command line turns into a one-line message and exit status 2."""

from __future__ import annotations


class TvmNasError(Exception):
    """Bad input or a missing prerequisite: the message names the file, the field and what to do."""

    exit_code = 2


def where(path, field: str | None = None) -> str:
    """`path: field` prefix used by every validation message."""
    return f"{path}: {field}" if field else str(path)
