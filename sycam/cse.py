"""Common sub-expressions across a batch of programs: what several candidates compute on the same
captures is computed once.

A search scores thousands of programs built from the same pieces (``relu(A)``, ``mean_hw(G)``,
``sum_c(mean_hw(G) * A)`` over every stage, ...). Within one program the compiler already shares
equal sub-expressions; :class:`SharedValues` extends that to a batch: before the batch is
evaluated on a chunk of captures, every sub-expression is counted over the batch's programs, and
the value of one that more than one program needs is kept until its last user is done (then
freed), within a byte budget. A shared value is the same kernel on the same inputs, so every
program's maps are bit for bit those it computes alone (tested).

Keys are structural: an operator node (``pos`` is not compared), the values of the ``?params``
below it, and the layer it is evaluated at; terminals and constants are never stored (they cost
nothing); the layers a program is bound to are part of the key.
Items are :class:`sycam.compile.CompiledProgram` (not imported: the compiler imports this module).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

from torch import Tensor

from sycam.errors import LayerError
from sycam.lang import ast as A

#: the most bytes of shared values held at once (beyond it, a value is computed by each user)
MAX_BYTES = 1 << 30


class NodeKey:
    """A sub-expression by structure and by the values of its ``?params`` (hash computed once)."""

    __slots__ = ("node", "params", "_hash")

    def __init__(self, node: A.Expr, params: tuple[tuple[str, float], ...]) -> None:
        self.node, self.params = node, params
        self._hash = hash((node, params))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NodeKey) and self._hash == other._hash and self.params == other.params
                and self.node == other.node)


def shareable(node: A.Expr) -> bool:
    """Worth storing: a node that computes something (not a terminal, constant or variable)."""
    return not isinstance(node, (A.Num, A.Param, A.Terminal, A.Var))


def _default_layer(compiled: Any) -> str | None:
    try:
        return compiled.resolver.default
    except LayerError:  # no default layer: every terminal names its layer
        return None


def _nbytes(value) -> int:
    if isinstance(value, Tensor):
        return value.element_size() * value.numel()
    return sum(_nbytes(v) for v in value)  # a per-layer list


class SharedValues:
    """The shared sub-expression values of one batch ``[(compiled, params), ...]`` on one chunk of
    captures. Use :meth:`user` for each program in turn (``compiled(caps, params, shared=...)``)
    and :meth:`done` once it has been evaluated (or failed): its values nobody else needs are freed.
    A new chunk needs a new object (:meth:`fresh` keeps the keys, computed once per batch).
    Programs bound to different layers (another model, default layer or stages) share nothing."""

    def __init__(self, items: Sequence[tuple[Any, Mapping[str, float] | None]], max_bytes: int | None = None,
                 _keys: list[dict[int, tuple]] | None = None) -> None:
        self.items = list(items)
        # a bare terminal outside each(...) reads the default layer: the same value as inside an each at it
        self._defaults = [_default_layer(compiled) for compiled, _ in self.items]
        if _keys is None:
            _keys = [{i: (compiled.resolver.identity, key) for i, key in compiled.node_keys(params).items()}
                     for compiled, params in self.items]
        self._keys = _keys
        counts = Counter(k for keys in self._keys for k in set(keys.values()))
        self._users = {k: c for k, c in counts.items() if c > 1}
        self._values: dict[tuple, dict[str | None, object]] = {}
        self._bytes = 0
        self.max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        self.hits = 0

    def fresh(self) -> "SharedValues":
        """The same batch on a new chunk of captures: no values, every user again."""
        return SharedValues(self.items, self.max_bytes, self._keys)

    def user(self, j: int) -> "SharedView":
        return SharedView(self, self._keys[j], self._defaults[j])

    def get(self, key: tuple, layer: str | None):
        hit = self._values.get(key, {}).get(layer)
        if hit is not None:
            self.hits += 1
        return hit

    def put(self, key: tuple, layer: str | None, value) -> None:
        if key not in self._users:
            return
        size = _nbytes(value)
        if self._bytes + size > self.max_bytes:
            return
        self._values.setdefault(key, {})[layer] = value
        self._bytes += size

    def done(self, j: int) -> None:
        """Program ``j`` is evaluated: free what no later program needs."""
        for key in set(self._keys[j].values()):
            left = self._users.get(key)
            if left is None:
                continue
            if left > 1:
                self._users[key] = left - 1
                continue
            del self._users[key]
            for value in self._values.pop(key, {}).values():
                self._bytes -= _nbytes(value)


class SharedView:
    """One program's access to a batch's :class:`SharedValues` (its keys by node id)."""

    __slots__ = ("store", "keys", "default")

    def __init__(self, store: SharedValues, keys: dict[int, tuple], default: str | None) -> None:
        self.store, self.keys, self.default = store, keys, default

    def get(self, node: A.Expr, layer: str | None):
        key = self.keys.get(id(node))
        return None if key is None else self.store.get(key, layer or self.default)

    def put(self, node: A.Expr, layer: str | None, value) -> None:
        key = self.keys.get(id(node))
        if key is not None:
            self.store.put(key, layer or self.default, value)
