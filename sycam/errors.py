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


class ModelError(SycamError, ValueError):
    """A model, weights file or import path that sycam cannot use."""


class CaptureError(SycamError, ValueError):
    """A model/input combination that cannot be captured (outputs, targets, layers)."""


_WRAPPED: dict[tuple[type, type], type] = {}

#: the exception types a public entry point turns into sycam errors (never KeyboardInterrupt)
BOUNDARY = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError, ImportError, AttributeError,
            SyntaxError, NotImplementedError)


def as_sycam(err: BaseException, kind: type[SycamError] = SycamError) -> SycamError:
    """``err`` as a sycam error of ``kind`` that is still an instance of its original class (so
    ``except ValueError`` keeps working) and keeps its message."""
    if isinstance(err, SycamError):
        return err
    key = (kind, type(err))
    cls = _WRAPPED.get(key)
    if cls is None:
        try:
            cls = type(f"{kind.__name__}[{type(err).__name__}]", (kind, type(err)), {})
        except TypeError:  # incompatible layouts: fall back to the sycam kind alone
            cls = kind
        _WRAPPED[key] = cls
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    try:
        wrapped = cls(message)
    except Exception:  # noqa: BLE001 - exotic constructors (e.g. OSError subclasses)
        wrapped = kind(message)
    wrapped.__cause__ = err
    return wrapped  # type: ignore[return-value]


class ParamError(SycamError, ValueError):
    """A ``?param`` value that is missing, unknown or outside its range."""


class MetricError(SycamError, ValueError):
    """A metric given options or inputs it cannot use (an unknown noise family, maps of the wrong
    shape): the message names the metric and the value."""
