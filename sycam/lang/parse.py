"""Parse program text into the typed AST (a Lark LALR parser plus a Transformer).

Programs are parsed, never evaluated as Python: anything outside the grammar is a located
:class:`~sycam.errors.ProgramSyntaxError`. ``use(name)`` reads another reference program (a
``.cam`` file, parsed the same way) and inlines it here, at parse time.

Why one module of ~420 lines: the transformer, ``use(...)``'s recursive parse and the rendering of
Lark's errors share one located-error protocol (``_Located`` raised inside the transformer, turned
into a ``ProgramSyntaxError`` with the source's line and column).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import sys
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from sycam.errors import ProgramError, ProgramSyntaxError
from sycam.lang import ast as A
from sycam.lang.ops import OPS, SCORE_KINDS, TERMINALS

MAX_SOURCE_CHARS = 100_000
MAX_DEPTH = 200  # deeper trees would exhaust Python's recursion in the checker and compiler


def grammar_path() -> Path:
    """The grammar file: packaged beside the code in a wheel, at the repo's top level otherwise."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "grammars" / "cam.lark", here.parents[2] / "grammars" / "cam.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("sycam's grammar cam.lark is missing from the installation")


def library_dir() -> Path:
    """Where ``use(name)`` finds reference programs: ``sycam/programs/*.cam`` (read as data, by
    path: the language never imports the programs package)."""
    return Path(__file__).resolve().parents[1] / "programs"


@functools.lru_cache(maxsize=1)
def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


def grammar_hash() -> str:
    """A short hash of the grammar (recorded in run manifests)."""
    return hashlib.sha256(grammar_text().encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _pos(meta_or_token) -> A.Pos | None:
    line = getattr(meta_or_token, "line", None)
    if line is None:
        return None
    return A.Pos(line, meta_or_token.column, getattr(meta_or_token, "start_pos", 0) or 0,
                 getattr(meta_or_token, "end_pos", 0) or 0)


class _Located(Exception):
    """Raised inside the transformer; turned into a ProgramSyntaxError with the source."""

    def __init__(self, message: str, where) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def _finite(token: Token) -> float:
    value = float(token)
    if value != value or value in (float("inf"), float("-inf")):
        raise _Located(f"number {token} is not finite", token)
    return value


def _relocate(node, pos: A.Pos | None):
    """``node`` with every source position replaced by ``pos`` (an inlined program's nodes point
    at the ``use(...)`` that brought them in, not at lines of another file)."""
    if not dataclasses.is_dataclass(node) or isinstance(node, type):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if f.name == "pos":
            changes["pos"] = pos
        elif isinstance(value, tuple):
            changes[f.name] = tuple(_relocate(v, pos) for v in value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _relocate(value, pos)
    return dataclasses.replace(node, **changes)


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark tree -> sycam.lang.ast nodes. ``library``: where ``use(name)`` reads programs;
    ``stack``: the names of the programs being expanded (a cycle is an error)."""

    def __init__(self, library: Path, stack: tuple[str, ...]) -> None:
        super().__init__()
        self.library = library
        self.stack = stack
        self.uses: list[tuple[str, A.ScoreSpec, Token]] = []

    # -- program
    def start(self, meta, items):
        *stmts, body = items
        lets: list[A.Let] = []
        score: A.ScoreSpec | None = None
        seen: set[str] = set()
        for stmt in stmts:
            if isinstance(stmt, A.Let):
                if stmt.name in seen:
                    raise _Located(f"'{stmt.name}' is bound twice", stmt.pos)
                seen.add(stmt.name)
                lets.append(stmt)
            else:
                if score is not None:
                    raise _Located("a program has at most one score directive", stmt[1])
                score = stmt[0]
        mine = score or A.ScoreSpec()
        for name, theirs, token in self.uses:
            if theirs != mine:
                raise _Located(f"use({name}) explains the score '{_score_text(theirs)}' but this program explains "
                               f"'{_score_text(mine)}'; a program explains one score (add `{_score_text(theirs)};`)", token)
        return A.Program(body=body, lets=tuple(lets), score=score)

    def let_stmt(self, meta, items):
        name, value = items
        if str(name) in OPS or str(name) in ("each", "fuse", "let", "score", "use"):
            raise _Located(f"'{name}' is an operator name and cannot be bound", name)
        if str(name) in TERMINALS:  # its uses would read the terminal, not the binding
            raise _Located(f"'{name}' is a terminal ({', '.join(TERMINALS)}) and cannot be bound", name)
        return A.Let(str(name), value, _pos(name))

    def score_stmt(self, meta, items):
        return (items[0], _pos(meta))

    def score_plain(self, meta, items):
        return self._score(items[0], [])

    def score_call(self, meta, items):
        return self._score(items[0], [a for a in items[1:] if a is not None])

    def _score(self, name: Token, args: list) -> A.ScoreSpec:
        kind = str(name)
        if kind not in SCORE_KINDS:
            raise _Located(f"unknown score '{kind}'; expected one of {', '.join(SCORE_KINDS)}", name)
        want = SCORE_KINDS[kind]
        values = [a.value for a in args]
        if values and len(values) != want:
            raise _Located(f"score {kind} takes {want} arguments (k, alpha), got {len(values)}", name)
        if kind == "finer":
            k, alpha = (values or [3, 1.0])
            if k != int(k) or k < 1:
                raise _Located(f"finer's k must be a positive integer, got {k}", name)
            return A.ScoreSpec("finer", int(k), float(alpha))
        return A.ScoreSpec(kind)

    # -- arithmetic
    def _bin(self, op, meta, items):
        return A.BinOp(op, items[0], items[1], _pos(meta))

    def add(self, meta, items):
        return self._bin("+", meta, items)

    def sub(self, meta, items):
        return self._bin("-", meta, items)

    def mul(self, meta, items):
        return self._bin("*", meta, items)

    def div(self, meta, items):
        return self._bin("/", meta, items)

    def neg(self, meta, items):
        # a literal's sign folds into the literal, so pretty-printing round-trips
        if isinstance(items[0], A.Num):
            return A.Num(-items[0].value, _pos(meta))
        return A.Call("neg", (items[0],), _pos(meta))

    def pow(self, meta, items):
        return A.Pow(items[0], items[1], _pos(meta))

    def neg_number(self, meta, items):
        return A.Num(-items[0].value, _pos(meta))

    # -- atoms
    def number(self, meta, items):
        return A.Num(_finite(items[0]), _pos(items[0]))

    def signed_number(self, meta, items):
        return _finite(items[0])

    def signed_int(self, meta, items):
        return int(items[0])

    def param(self, meta, items):
        name, lo, hi, default = items
        if (lo is None) != (hi is None):
            raise _Located("a parameter range needs both bounds: ?p:[lo,hi]", name)
        if lo is not None and lo > hi:
            raise _Located(f"empty range [{lo}, {hi}] for ?{name}", name)
        if default is not None and lo is not None and not lo <= default <= hi:
            raise _Located(f"default {default} of ?{name} lies outside [{lo}, {hi}]", name)
        return A.Param(str(name), lo, hi, default, _pos(meta))

    def var(self, meta, items):
        return A.Var(str(items[0]), _pos(items[0]))

    def terminal(self, meta, items):
        kind, layer = items
        if kind == "Y" and layer is not None:
            raise _Located("Y (the explained score) has no layer", kind)
        if kind == "X" and layer is not None:
            raise _Located("X (the input image) has no layer", kind)
        return A.Terminal(str(kind), layer, _pos(kind))

    def layer_index(self, meta, items):
        return A.LayerRef(index=items[0])

    def layer_name(self, meta, items):
        return A.LayerRef(name=str(items[0]))

    def layer_string(self, meta, items):
        return A.LayerRef(name=str(items[0])[1:-1])

    def call(self, meta, items):
        name, *args = items
        fn = str(name)
        spec = OPS.get(fn)
        if spec is None:
            close = difflib.get_close_matches(fn, list(OPS) + ["each", "fuse"], n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise _Located(f"unknown operator '{fn}'{hint}", name)
        if len(args) != spec.arity:
            raise _Located(f"{fn} takes {spec.arity} argument{'s' if spec.arity > 1 else ''}, got {len(args)}", name)
        for i in spec.const_args:
            if not isinstance(args[i], (A.Num, A.Param)):
                raise _Located(f"argument {i + 1} of {fn} must be a number or a ?param", getattr(args[i], "pos", None) or name)
        return A.Call(fn, tuple(args), _pos(name))

    def use(self, meta, items):
        """``use(name)``: the reference program ``name`` inlined as ``norm(fuse(<body>, mean, input))``
        (its map as ``sycam explain`` gives it: on the input grid, min-max normalised). Like a
        ``let``, the inlined body is a macro: inside ``each(...)`` its bare A is the current layer."""
        token = items[0]
        name = str(token)
        if name in self.stack:
            cycle = " -> ".join(self.stack[self.stack.index(name):] + (name,))
            raise _Located(f"use({name}) is a cycle: {cycle} (a program cannot use itself, directly or through others)", token)
        path = self.library / f"{name}.cam"
        if not path.is_file():
            known = sorted(p.stem for p in self.library.glob("*.cam"))
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; reference programs: {', '.join(known)}"
            raise _Located(f"use({name}): no reference program named '{name}'{hint}", token)
        from sycam.lang.types import check  # the checker imports nothing of the parser

        try:
            ref = _parse(path.read_text(encoding="utf-8"), self.library, self.stack + (name,))
            check(ref)
        except ProgramError as err:
            where = f" (line {err.line}, column {err.column} of {name}.cam)" if err.line is not None else ""
            raise _Located(f"in use({name}): {err.message}{where}", token) from None
        self.uses.append((name, ref.score_spec, token))
        pos = _pos(token)
        body = _relocate(A.inline_lets(ref), pos)
        return A.Call("norm", (A.Fuse(body, None, "mean", "input", pos),), pos)

    def each(self, meta, items):
        return A.Each(items[0], items[1], _pos(meta))

    def fuse(self, meta, items):
        rest = [i for i in items if i is not None]
        maps = rest[0]
        weights = rest[1] if len(rest) > 1 and not isinstance(rest[1], Token) else None
        tokens = [t for t in rest if isinstance(t, Token)]
        mode = str(tokens[0])
        grid = str(tokens[1]) if len(tokens) > 1 else "finest"
        return A.Fuse(maps, weights, mode, grid, _pos(meta))

    # -- selections
    def sel_named(self, meta, items):
        return A.SelNamed(str(items[0]))

    def slice(self, meta, items):
        start, stop, step = (list(items) + [None, None, None])[:3]
        if step == 0:
            raise _Located("a slice step cannot be zero", meta)
        return A.SelSlice(start, stop, step)

    def sel_list(self, meta, items):
        return A.SelList(tuple(items))


_TOKEN_WORDS = {
    "RPAR": "')'", "LPAR": "'('", "COMMA": "','", "SEMICOLON": "';'", "PLUS": "'+'", "MINUS": "'-'",
    "STAR": "'*'", "SLASH": "'/'", "CIRCUMFLEX": "'^'", "EQUAL": "'='", "COLON": "':'", "AT": "'@'",
    "LSQB": "'['", "RSQB": "']'", "QMARK": "'?'", "NAME": "a name", "NUMBER": "a number",
    "SIGNED_NUMBER": "a number", "SIGNED_INT": "an integer", "TERMINAL": "A, G, S, D, R, R1, Y or X",
    "DOTTED_NAME": "a module name", "ESCAPED_STRING": "a quoted module name",
    "SELECTOR_NAME": "a layer selection (convs, last, stages)", "FUSE_MODE": "a fuse mode (sum, mean, max, prod)",
    "FUSE_GRID": "a grid (finest, input)", "$END": "end of program", "<END-OF-FILE>": "end of program",
}
_EXPR_START = {"NUMBER", "NAME", "TERMINAL", "LPAR", "MINUS", "QMARK", "EACH", "FUSE", "USE"}


def _describe_expected(expected: set[str]) -> str:
    words: list[str] = []
    if _EXPR_START & expected and len(_EXPR_START & expected) >= 3:
        words.append("an expression")
        expected = expected - _EXPR_START
    for name in sorted(expected):
        if name.startswith("__ANON") or name in ("EACH", "FUSE", "LET", "SCORE", "USE"):
            continue
        words.append(_TOKEN_WORDS.get(name, name.lower()))
    uniq = list(dict.fromkeys(words))
    if not uniq:
        return "something else"
    return uniq[0] if len(uniq) == 1 else ", ".join(uniq[:-1]) + " or " + uniq[-1]


def _syntax_error(err: UnexpectedInput, source: str) -> ProgramSyntaxError:
    if isinstance(err, UnexpectedToken):
        tok = err.token
        expected = set(err.expected)
        try:  # the exact set where LALR merged states (err.expected may list tokens that cannot follow)
            expected = set(err.interactive_parser.accepts()) or expected
        except Exception:  # noqa: BLE001 - best effort; the merged set is still a useful hint
            pass
        got = "end of program" if tok.type == "$END" else repr(str(tok))
        at_end = tok.type == "$END" or err.line in (None, -1)
        line, col = _end_position(source) if at_end else (err.line, err.column)
        msg = f"unexpected {got}; expected {_describe_expected(expected)}"
        return ProgramSyntaxError(msg, source, line, col, sorted(expected))
    if isinstance(err, UnexpectedCharacters):
        ch = source[err.pos_in_stream] if err.pos_in_stream < len(source) else ""
        expected = set(err.allowed or ())
        hint = ""
        if ch in "'\"" or ch in "._[]{}!&|<>%$`\\":
            hint = " (programs are not Python: only the operators of the CAM language are allowed)"
        msg = f"unexpected character {ch!r}{hint}; expected {_describe_expected(expected)}"
        return ProgramSyntaxError(msg, source, err.line, err.column, sorted(expected))
    if isinstance(err, UnexpectedEOF):
        line, col = _end_position(source)
        return ProgramSyntaxError(f"unexpected end of program; expected {_describe_expected(set(err.expected))}",
                                  source, line, col, sorted(err.expected))
    return ProgramSyntaxError(str(err), source)


def _end_position(source: str) -> tuple[int, int]:
    """Just after the last non-blank character."""
    lines = source.rstrip().split("\n")
    return len(lines), len(lines[-1]) + 1


def _score_text(spec: A.ScoreSpec) -> str:
    return f"score finer({spec.k}, {spec.alpha:g})" if spec.kind == "finer" else f"score {spec.kind}"


def parse(text: str, *, name: str | None = None, library: Path | None = None) -> A.Program:
    """Parse a program's text into a :class:`~sycam.lang.ast.Program` (syntax only; see
    :func:`sycam.lang.types.check` for typing).

    ``use(other)`` inlines the reference program ``other`` from ``library`` (default
    :func:`library_dir`); ``name`` is this program's own name there, if it is one (so that a
    program using itself is reported as a cycle at once).

    Raises :class:`~sycam.errors.ProgramSyntaxError` with line, column and a caret.
    """
    return _parse(text, library if library is not None else library_dir(), (name,) if name else ())


def _parse(text: str, library: Path, stack: tuple[str, ...]) -> A.Program:
    if len(stack) > 32:
        raise ProgramSyntaxError(f"use(...) nests more than 32 programs deep: {' -> '.join(stack)}")
    if not isinstance(text, str):
        raise TypeError(f"program text must be a str, got {type(text).__name__}")
    if len(text) > MAX_SOURCE_CHARS:
        raise ProgramSyntaxError(f"program is {len(text)} characters long; the limit is {MAX_SOURCE_CHARS}")
    if not text.strip() or not any(line.split("#", 1)[0].strip() for line in text.splitlines()):
        raise ProgramSyntaxError("empty program: expected an expression", text, 1, 1)
    limit = sys.getrecursionlimit()
    try:
        # long flat sums build deep left-leaning trees; allow them up to the source-size limit
        sys.setrecursionlimit(max(limit, 20_000))
        tree = _parser().parse(text)
        program = _ToAst(library, stack).transform(tree)
    except UnexpectedInput as err:
        raise _syntax_error(err, text) from None
    except VisitError as err:
        inner = err.orig_exc
        if isinstance(inner, _Located):
            where = inner.where
            line = getattr(where, "line", None)
            col = getattr(where, "column", None)
            raise ProgramSyntaxError(inner.message, text, line, col) from None
        if isinstance(inner, ProgramError):
            raise inner from None
        raise ProgramSyntaxError(f"could not read program: {inner}", text) from None
    except RecursionError:
        raise ProgramSyntaxError("program is nested too deeply (more than a few thousand levels)", text, 1, 1) from None
    finally:
        sys.setrecursionlimit(limit)
    for node in [program.body] + [let.value for let in program.lets]:
        depth = _depth(node)
        if depth > MAX_DEPTH:
            raise ProgramSyntaxError(f"program is too deep: its syntax tree has {depth} levels, at most {MAX_DEPTH} are allowed "
                                     "(each term of a long sum or product adds a level; use let bindings)", text, 1, 1)
    return A.Program(program.body, program.lets, program.score, source=text)


def _depth(root: A.Expr) -> int:
    """Height of an expression tree, computed without recursion."""
    best, stack = 0, [(root, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        stack.extend((child, d + 1) for child in A.children(node))
    return best
