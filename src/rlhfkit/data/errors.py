"""The one error type for bad input: it names the file, the line and the field."""

from __future__ import annotations


class RlhfkitError(Exception):
    """An error the user can fix; the CLI prints it on one line and exits with code 2."""


class RecordError(RlhfkitError):
    """A bad record. ``path``/``line`` are filled in by the reader that found it."""

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.path = path
        self.line = line

    def at(self, path: str, line: int | None) -> "RecordError":
        """The same error, located in ``path`` at ``line`` (1-based)."""
        return RecordError(self.message, field=self.field, path=str(path), line=line)

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return f"{where}{self.message}"
