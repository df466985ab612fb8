"""Pretty-print an AST back to program text: ``parse(pretty(p)) == p``."""
from __future__ import annotations

from sycam.lang import ast as A

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def fmt_number(value: float) -> str:
    """Shortest text that parses back to the same float."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _layer(ref: A.LayerRef) -> str:
    if ref.index is not None:
        return str(ref.index)
    name = str(ref.name)
    simple = name.replace(".", "").replace("_", "").isalnum() and (name[0].isalpha() or name[0] == "_")
    return name if simple and ".." not in name and not name.endswith(".") else '"' + name + '"'


def _selection(sel: A.Selection) -> str:
    if isinstance(sel, A.SelNamed):
        return sel.name
    if isinstance(sel, A.SelSlice):
        parts = ["" if v is None else str(v) for v in (sel.start, sel.stop)]
        text = ":".join(parts)
        return text + (f":{sel.step}" if sel.step is not None else "")
    return "[" + ", ".join(_layer(r) for r in sel.layers) + "]"


def _param(p: A.Param) -> str:
    text = "?" + p.name
    if p.lo is not None:
        text += f":[{fmt_number(p.lo)},{fmt_number(p.hi)}]"  # type: ignore[arg-type]
    if p.default is not None:
        text += "=" + fmt_number(p.default)
    return text


def _prec(node: A.Expr) -> int:
    if isinstance(node, A.BinOp):
        return _PREC[node.op]
    if isinstance(node, A.Num) and node.value < 0:
        return 3  # prints with a unary minus
    if isinstance(node, A.Pow):
        return 4
    return 5


def pretty_expr(node: A.Expr) -> str:
    """One expression as text, with the fewest parentheses that keep its structure."""
    if isinstance(node, A.Num):
        return fmt_number(node.value)
    if isinstance(node, A.Param):
        return _param(node)
    if isinstance(node, A.Terminal):
        return node.kind + ("" if node.layer is None else "@" + _layer(node.layer))
    if isinstance(node, A.Var):
        return node.name
    if isinstance(node, A.BinOp):
        prec = _PREC[node.op]
        left = pretty_expr(node.left)
        right = pretty_expr(node.right)
        if _prec(node.left) < prec:
            left = f"({left})"
        # left-associative: an equal-precedence right operand needs parentheses
        if _prec(node.right) <= prec:
            right = f"({right})"
        return f"{left} {node.op} {right}"
    if isinstance(node, A.Pow):
        base = pretty_expr(node.base)
        if _prec(node.base) < 5:
            base = f"({base})"
        exponent = _param(node.exponent) if isinstance(node.exponent, A.Param) else fmt_number(node.exponent.value)
        return f"{base}^{exponent}"
    if isinstance(node, A.Call):
        return f"{node.fn}(" + ", ".join(pretty_expr(a) for a in node.args) + ")"
    if isinstance(node, A.Each):
        return f"each({_selection(node.selection)}, {pretty_expr(node.body)})"
    if isinstance(node, A.Fuse):
        parts = [pretty_expr(node.maps)]
        if node.weights is not None:
            parts.append(pretty_expr(node.weights))
        parts.append(node.mode)
        if node.grid != "finest":
            parts.append(node.grid)
        return "fuse(" + ", ".join(parts) + ")"
    raise TypeError(f"not an expression node: {node!r}")


def pretty_score(spec: A.ScoreSpec) -> str:
    if spec.kind == "finer":
        return f"score finer({spec.k}, {fmt_number(spec.alpha)});"
    return f"score {spec.kind};"


def pretty(program: A.Program | A.Expr) -> str:
    """A whole program as text: score directive, one ``let`` per line, then the body."""
    if not isinstance(program, A.Program):
        return pretty_expr(program)
    lines = []
    if program.score is not None:
        lines.append(pretty_score(program.score))
    lines += [f"let {let.name} = {pretty_expr(let.value)};" for let in program.lets]
    lines.append(pretty_expr(program.body))
    return "\n".join(lines)
