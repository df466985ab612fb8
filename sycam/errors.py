"""sycam's own exception types. Everything a user can cause raises a :class:`SycamError`."""
from __future__ import annotations


class SycamError(Exception):
    """Base class of every error sycam raises on bad input."""


class ProgramError(SycamError, ValueError):
    """A problem in a program's text, located by line and column.

    ``str(err)`` shows the message, the offending line and a caret under the column, lark-style::

        line 1, column 26: expected an expression, got ')'
          relu(sum_c(mean_hw(G) * ))
                                   ^
    """

    kind = "error"

    def __init__(self, message: str, source: str | None = None, line: int | None = None,
                 column: int | None = None, expected: list[str] | None = None) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        self.expected = expected or []
        super().__init__(self._render())

    def _render(self) -> str:
        if self.line is None or self.column is None:
            return f"{self.kind}: {self.message}"
        head = f"{self.kind} at line {self.line}, column {self.column}: {self.message}"
        if not self.source:
            return head
        lines = self.source.splitlines() or [""]
        text = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        caret = " " * (self.column - 1) + "^"
        return f"{head}\n  {text}\n  {caret}"


class ProgramSyntaxError(ProgramError):
    kind = "syntax error"


class ProgramTypeError(ProgramError):
    kind = "type error"


class ProgramRuntimeError(SycamError):
    """A well-typed program produced NaN/Inf or could not be evaluated on a model."""


class LayerError(SycamError, ValueError):
    """A layer reference that does not resolve against a model."""
