"""A small, safe expression language over event branches (selection, features, labels, weight).

Expressions are Python-like text from a config file, e.g.::

    CBL_Region == 1 and Photon_pt[CBL_RecoPhi_photonindex] > 220
    sqrt(2*Muon_pt[0]*Muon_pt[1]*(cosh(Muon_eta[0]-Muon_eta[1]) - cos(Muon_phi[0]-Muon_phi[1])))

A config handed over by a colleague must never run code, so the text is parsed with
:mod:`ast` and every node is checked against a whitelist *before anything is evaluated*;
evaluation is a tree walk over the checked nodes that only ever calls numpy ufuncs (never
``eval``/``exec``). Grammar:

- names (branches of the events, or per-dataset metadata values), numbers (int, float),
  ``True``/``False``;
- arithmetic ``+ - * / // % **`` (the exponent must be a numeric constant with
  ``abs(exponent) <= MAX_EXPONENT``), unary ``-``/``+``; arithmetic is done in float64, so
  ``x // 0`` is inf, ``x % 0`` is NaN and nothing wraps around (counted and dropped, never 0);
- comparisons ``== != < <= > >=`` (chains like ``1 < x < 2`` allowed);
- ``and``, ``or``, ``not`` -- element-wise (vectorised) logic, not Python short-circuiting;
- the functions in :data:`FUNCTIONS` (``min``/``max`` are element-wise with two arguments);
- ``X[i]``: one element per event of the jagged ``X``; ``i`` is an integer constant or a
  per-event integer expression. An index that is out of range or negative (HEP convention:
  ``-1`` = no candidate) gives a *missing* value: comparisons with it are False in a selection,
  and it becomes NaN in a feature.

Everything else (attribute access, calls of other names, dunder names, lambdas,
comprehensions, strings, slices, starred, walrus, ...) raises :class:`ExpressionError` naming
the expression and the offending construct.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fedhex_hep.errors import UsageError, one_line

__all__ = [
    "ExpressionError",
    "Expression",
    "compile_expression",
    "FUNCTIONS",
    "MAX_EXPONENT",
    "MAX_LENGTH",
    "MAX_NODES",
]

MAX_EXPONENT = 16
"""Largest allowed ``abs(exponent)`` in ``a ** b``: refuses exponent tricks like ``2**10**10``."""
MAX_LENGTH = 4000
"""Longest accepted expression text (characters)."""
MAX_NODES = 500
"""Most AST nodes in one expression: bounds parse and evaluation cost."""


class ExpressionError(UsageError, ValueError):
    """An expression is refused or cannot be evaluated; the message names expression and cause."""


# name -> (numpy function, number of arguments). Only numpy ufuncs: they act element-wise on
# numpy and (jagged) awkward arrays alike and cannot reach Python objects.
FUNCTIONS: dict[str, tuple[Callable[..., Any], int]] = {
    "abs": (np.absolute, 1),
    "sqrt": (np.sqrt, 1),
    "log": (np.log, 1),
    "log10": (np.log10, 1),
    "exp": (np.exp, 1),
    "sin": (np.sin, 1),
    "cos": (np.cos, 1),
    "tan": (np.tan, 1),
    "sinh": (np.sinh, 1),
    "cosh": (np.cosh, 1),
    "tanh": (np.tanh, 1),
    "arcsin": (np.arcsin, 1),
    "arccos": (np.arccos, 1),
    "arctan": (np.arctan, 1),
    "arctan2": (np.arctan2, 2),
    "hypot": (np.hypot, 2),
    "min": (np.minimum, 2),
    "max": (np.maximum, 2),
}

_BINOPS: dict[type, Callable[..., Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_CMPOPS: dict[type, Callable[..., Any]] = {
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
}
_INT64_MAX = np.iinfo(np.int64).max

# Human-readable names for refused constructs.
_CONSTRUCT_NAMES = {
    ast.Attribute: "attribute access",
    ast.Lambda: "lambda",
    ast.ListComp: "list comprehension",
    ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension",
    ast.GeneratorExp: "generator expression",
    ast.Starred: "starred expression",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Slice: "slice",
    ast.Tuple: "tuple",
    ast.List: "list",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.JoinedStr: "f-string",
    ast.IfExp: "conditional expression (x if c else y)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


def _construct_name(node: ast.AST) -> str:
    for cls, name in _CONSTRUCT_NAMES.items():
        if isinstance(node, cls):
            return name
    return type(node).__name__


@dataclass(frozen=True)
class Expression:
    """A checked expression. ``names`` are the branch / metadata names it reads."""

    text: str
    names: frozenset[str]
    _tree: ast.Expression = field(repr=False, compare=False)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Re-check on unpickling: a pickled Expression is only ever its text.
        return (compile_expression, (self.text,))

    def evaluate(self, namespace: Mapping[str, Any]) -> Any:
        """Evaluate on ``namespace`` (name -> numpy/awkward array or scalar).

        Returns a numpy array, an awkward array (possibly with missing values) or a scalar.
        Floating-point warnings (division by zero, log of negatives) are silenced: the
        results are inf/NaN, which the caller counts and drops.
        """
        try:
            with np.errstate(all="ignore"):
                return _Evaluator(self.text, namespace).visit(self._tree.body)
        except ExpressionError:
            raise
        except KeyError as exc:
            raise ExpressionError(f"expression {self.text!r}: unknown name {exc.args[0]!r}") from None
        except (TypeError, ValueError, OverflowError, IndexError) as exc:
            raise ExpressionError(f"expression {self.text!r}: cannot evaluate ({one_line(exc, 300)})") from None


def compile_expression(text: str) -> Expression:
    """Parse and check ``text``; raise :class:`ExpressionError` for anything not whitelisted."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression {text!r} is not a string")
    stripped = text.strip()
    if not stripped:
        raise ExpressionError("expression is empty")
    if len(stripped) > MAX_LENGTH:
        raise ExpressionError(f"expression {stripped[:40]!r}... is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"expression {stripped!r}: invalid syntax ({exc.msg})") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"expression {stripped!r}: cannot parse ({type(exc).__name__})") from None
    names: set[str] = set()
    _Checker(stripped, names).check(tree.body)
    return Expression(stripped, frozenset(names), tree)


class _Checker:
    """Walks the AST and refuses every node type that is not part of the grammar."""

    def __init__(self, text: str, names: set[str]) -> None:
        self.text = text
        self.names = names
        self.count = 0

    def refuse(self, what: str) -> ExpressionError:
        return ExpressionError(f"expression {self.text!r}: {what} is not allowed")

    def check(self, node: ast.AST, depth: int = 0) -> None:
        self.count += 1
        if self.count > MAX_NODES or depth > 100:
            raise ExpressionError(f"expression {self.text[:60]!r}: too complex (more than {MAX_NODES} parts)")
        if isinstance(node, ast.Name):
            self.check_name(node.id)
            self.names.add(node.id)
        elif isinstance(node, ast.Constant):
            self.check_constant(node.value)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise self.refuse(f"operator {type(node.op).__name__}")
            if isinstance(node.op, ast.Pow):
                self.check_exponent(node.right)
            self.check(node.left, depth + 1)
            self.check(node.right, depth + 1)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
                raise self.refuse(f"operator {type(node.op).__name__}")
            self.check(node.operand, depth + 1)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self.check(value, depth + 1)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _CMPOPS:
                    raise self.refuse(f"comparison {type(op).__name__}")
            self.check(node.left, depth + 1)
            for comparator in node.comparators:
                self.check(comparator, depth + 1)
        elif isinstance(node, ast.Call):
            self.check_call(node, depth)
        elif isinstance(node, ast.Subscript):
            if isinstance(node.slice, (ast.Slice, ast.Tuple)):
                raise self.refuse(_construct_name(node.slice) + " in []")
            self.check(node.value, depth + 1)
            self.check(node.slice, depth + 1)
        else:
            raise self.refuse(_construct_name(node))

    def check_name(self, name: str) -> None:
        if name.startswith("__") or name.endswith("__"):
            raise self.refuse(f"dunder name {name!r}")
        if name in FUNCTIONS:
            raise self.refuse(f"function {name!r} used as a value")

    def check_constant(self, value: Any) -> None:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            if abs(value) > _INT64_MAX:
                raise self.refuse(f"integer constant {str(value)[:20]}... (too large)")
            return
        if isinstance(value, float):
            return
        kind = {str: "string", bytes: "bytes", complex: "complex number"}.get(type(value), repr(value))
        raise self.refuse(f"{kind} constant")

    def check_exponent(self, node: ast.AST) -> None:
        value = _constant_number(node)
        if value is None:
            raise self.refuse("a non-constant exponent in '**'")
        if abs(value) > MAX_EXPONENT:
            raise self.refuse(f"exponent {value!r} (larger than {MAX_EXPONENT})")

    def check_call(self, node: ast.Call, depth: int) -> None:
        if not isinstance(node.func, ast.Name):
            raise self.refuse(f"calling {_construct_name(node.func)}")
        name = node.func.id
        if name not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ExpressionError(
                f"expression {self.text!r}: function {name!r} is not allowed (allowed: {allowed})"
            )
        if node.keywords:
            raise self.refuse(f"keyword arguments to {name}()")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.refuse(f"starred argument to {name}()")
        nargs = FUNCTIONS[name][1]
        if len(node.args) != nargs:
            raise ExpressionError(f"expression {self.text!r}: {name}() takes {nargs} argument(s)")
        for arg in node.args:
            self.check(arg, depth + 1)


def _constant_number(node: ast.AST) -> float | int | None:
    """The value of ``c``, ``-c`` or ``+c`` for a numeric constant ``c``, else None."""
    sign = 1
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return sign * node.value
    return None


def _is_awkward(value: Any) -> bool:
    return type(value).__module__.startswith("awkward") or hasattr(value, "layout")


def _dtype_kind(value: Any) -> str:
    """numpy dtype kind of the leaf values ('b', 'i', 'u', 'f', ...)."""
    if isinstance(value, (bool, np.bool_)):
        return "b"
    if isinstance(value, (int, np.integer)):
        return "i"
    if isinstance(value, (float, np.floating)):
        return "f"
    if isinstance(value, np.ndarray):
        return value.dtype.kind
    if _is_awkward(value):
        import awkward as ak

        layout = ak.to_layout(value)
        while not hasattr(layout, "dtype"):
            if not hasattr(layout, "content"):
                return "?"
            layout = layout.content
        return layout.dtype.kind
    return "?"


def _numeric(value: Any) -> Any:
    """Booleans and integers become float64 for arithmetic.

    Integer arithmetic in numpy is silent about its failures: ``x // 0`` and ``x % 0`` give 0 and
    overflow wraps around. In float64 they give inf/NaN instead, which the extraction counts and
    drops (``input.nonfinite``), and ``-True == -1`` as in Python.
    """
    kind = _dtype_kind(value)
    if kind not in "biu":
        return value
    if isinstance(value, (bool, int, np.bool_, np.integer)):
        return np.float64(value)
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    import awkward as ak

    return ak.values_astype(value, np.float64)


class _Evaluator:
    def __init__(self, text: str, namespace: Mapping[str, Any]) -> None:
        self.text = text
        self.namespace = namespace

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return self.namespace[node.id]
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return np.bool_(value)
            if isinstance(value, int):
                return np.int64(value)
            return np.float64(value)
        if isinstance(node, ast.BinOp):
            left = _numeric(self.visit(node.left))
            if isinstance(node.op, ast.Pow):
                # float exponent: no integer overflow wrap-around, negative powers allowed
                return np.power(left, np.float64(_constant_number(node.right)))
            right = _numeric(self.visit(node.right))
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.Not):
                return np.logical_not(operand)
            if isinstance(node.op, ast.USub):
                return np.negative(_numeric(operand))
            return _numeric(operand)
        if isinstance(node, ast.BoolOp):
            func = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            result = self.visit(node.values[0])
            for value in node.values[1:]:
                result = func(result, self.visit(value))
            return result
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            result = None
            for op, comp in zip(node.ops, node.comparators):
                right = self.visit(comp)
                part = _CMPOPS[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        if isinstance(node, ast.Call):
            func, _ = FUNCTIONS[node.func.id]  # type: ignore[attr-defined]
            return func(*[_numeric(self.visit(a)) for a in node.args])
        if isinstance(node, ast.Subscript):
            return self.pick(self.visit(node.value), self.visit(node.slice), node)
        # unreachable: the checker refused everything else
        raise ExpressionError(f"expression {self.text!r}: {_construct_name(node)} is not allowed")

    def pick(self, values: Any, index: Any, node: ast.Subscript) -> Any:
        """``values[index]``: one element per event of a jagged array; missing if out of range."""
        import awkward as ak

        what = ast.unparse(node.value)
        if not _is_awkward(values) or values.ndim != 2:
            raise ExpressionError(
                f"expression {self.text!r}: {what!r} is not a list per event, cannot index it with []"
            )
        n = len(values)
        kind = _dtype_kind(index)
        if kind not in "iub":
            if kind != "f":
                raise ExpressionError(f"expression {self.text!r}: index of {what!r} is not a number")
        if not _is_awkward(index) and np.ndim(index) == 0:
            idx = np.full(n, index, dtype=np.float64 if kind == "f" else np.int64)
        else:
            if _is_awkward(index):
                if index.ndim != 1:
                    raise ExpressionError(
                        f"expression {self.text!r}: index of {what!r} must be one number per event"
                    )
                index = ak.fill_none(ak.values_astype(index, np.float64), -1.0)
            idx = np.asarray(ak.to_numpy(index) if _is_awkward(index) else index)
            if idx.shape != (n,):
                raise ExpressionError(f"expression {self.text!r}: index of {what!r} must be one number per event")
        if idx.dtype.kind == "f":
            # non-integral or NaN indices are not an element: missing
            good = np.isfinite(idx) & (np.floor(idx) == idx)
            idx = np.where(good, idx, -1).astype(np.int64)
        else:
            idx = idx.astype(np.int64)
        starts, counts, content = _list_parts(values)
        valid = (idx >= 0) & (idx < counts)
        if len(content):
            picked = content[np.where(valid, starts + idx, 0)]
        else:
            picked = np.zeros(n, dtype=content.dtype)
        layout = ak.contents.ByteMaskedArray(
            ak.index.Index8(valid.astype(np.int8)), ak.contents.NumpyArray(picked), valid_when=True
        )
        return ak.Array(layout)


def _list_parts(values: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, count per event, flat content) of a jagged array, without copying the content
    when it is a plain list-of-numbers layout (the usual case for a branch)."""
    import awkward as ak

    layout = ak.to_layout(values)
    if isinstance(layout, (ak.contents.ListOffsetArray, ak.contents.ListArray)) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        buffers = (layout.starts.data, layout.stops.data, layout.content.data)
        if all(type(b) is np.ndarray for b in buffers):
            starts = buffers[0].astype(np.int64, copy=False)
            return starts, buffers[1].astype(np.int64, copy=False) - starts, buffers[2]
    counts = ak.to_numpy(ak.fill_none(ak.num(values, axis=1), 0)).astype(np.int64)
    content = ak.to_numpy(ak.flatten(values, axis=1))
    return np.cumsum(counts) - counts, counts, content
