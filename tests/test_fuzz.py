"""Fuzz campaign: hostile configurations, damaged ROOT files and models, random expression trees.

The property everywhere: a one-line FedhexError naming the culprit, or a correct result (checked
against an independent computation); never another exception type, a hang or silent wrong data.

Bounded and derandomised in the normal test run; the long run sets the number of examples per
test, e.g. ``FEDHEX_FUZZ_EXAMPLES=3000 python -m pytest tests/test_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from robust_helpers import small_config, toy_featureset, toy_model_config, write_small_root

from fedhex_hep.config import ConfigError, config_from_dict, default_config_text, load_config
from fedhex_hep.errors import FedhexError

LONG = int(os.environ.get("FEDHEX_FUZZ_EXAMPLES", "0"))
# the recursive expression strategy has a long repr; hypothesis warns about it, harmlessly
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


def fuzz_settings(default: int, share: float = 1.0) -> settings:
    """``default`` examples in the normal run; ``FEDHEX_FUZZ_EXAMPLES x share`` in the long run."""
    return settings(
        max_examples=max(1, int(LONG * share)) if LONG else default,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def assert_one_line(exc: BaseException) -> str:
    assert isinstance(exc, FedhexError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


# ------------------------------------------------------------------ configuration schema
def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        out = [prefix] if prefix else []
        for key, value in node.items():
            out += _leaves(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


CONFIG_KEYS = sorted(set(_leaves(tomllib.loads(default_config_text()))) | {
    "model.hidden_units", "generation.labels", "generation.ranges.phi", "training.label_jitter.labelomega",
    "training.spline_label_jitter.labelomega", "preprocessing.features.phi.bounds", "input.features._entry", "input.labels.weight",
})
NASTY = [
    math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1, -1.5, 1, 10**18, -(10**18), 2**63 - 1, 1e308, -1e308, 5e-324,
    "", " ", "x", "nan", "1e9", True, False, [], [math.nan], [0], [-1], [10**18], [[math.nan, 1.0]], [[1.0]], {},
    {"a": 1}, {"phi": math.nan}, [1.0, math.inf], [5.0, 1.0],
]
values = st.one_of(
    st.sampled_from(NASTY),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-(10**7), 10**7), st.floats()), max_size=3),
)
overrides_strategy = st.dictionaries(st.sampled_from(CONFIG_KEYS), values, min_size=1, max_size=3)


@fuzz_settings(150, share=1.0)
@given(overrides=overrides_strategy)
def test_fuzz_config_schema(overrides):
    from fedhex_hep.limits import MemoryLimitError, check_config

    try:
        config = load_config(overrides=overrides)
    except ConfigError as exc:
        text = assert_one_line(exc)
        assert "config key '" in text or "override" in text, text
        event("refused with ConfigError")
        return
    except FedhexError as exc:  # pragma: no cover - any other package error is a bug here
        pytest.fail(f"{type(exc).__name__} for a configuration: {exc}")
    # accepted: every number is finite, the TOML round trip is exact, and the memory check answers
    event("accepted")
    assert _all_finite(config.to_dict())
    assert config_from_dict(tomllib.loads(config.to_toml()), _complete=True) == config
    try:
        check_config(config)
    except MemoryLimitError as exc:
        assert "needs about" in assert_one_line(exc)


def _all_finite(node: Any) -> bool:
    if isinstance(node, dict):
        return all(_all_finite(v) for v in node.values())
    if isinstance(node, list):
        return all(_all_finite(v) for v in node)
    return not isinstance(node, float) or math.isfinite(node)


@fuzz_settings(60, share=0.5)
@given(text=st.text(max_size=300))
def test_fuzz_config_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert_one_line(exc)


# ------------------------------------------------------------------ expression trees
N = 9
FLAT = {
    "i": np.array([0, 1, -1, 3, -7, 2**62, -(2**62), 5, 2], dtype=np.int64),
    "f": np.array([0.0, -0.0, 1.5, -2.5, np.nan, np.inf, -np.inf, 1e300, 3.0]),
    "b": np.array([True, False, True, True, False, False, True, False, True]),
    "u": np.array([0, 1, 2, 3, 4, 5, 2**63, 7, 8], dtype=np.uint64),
}
JAGGED = {
    "J": [[1.0, 2.0], [], [np.nan], [4.0, -5.0, 6.0], [0.0], [1e300, -1e300], [], [7.0], [8.0, 9.0]],
    "K": [[0, 1], [], [2], [3, 4, 5], [-1], [2**62], [], [7], [1, 1]],
}
def _ufunc(func: Any) -> Any:
    """A numpy ufunc on python floats, through the same array loop as the evaluator's (the last bit
    of a transcendental function differs between implementations, and ``1e308 % x`` magnifies it)."""

    def call(*args: float) -> float:
        with np.errstate(all="ignore"):
            return float(func(*(np.full(N, a) for a in args))[0])

    return call


_FUNCS = {  # name -> (reference on python floats, arity)
    "abs": (abs, 1), "sqrt": (_ufunc(np.sqrt), 1), "exp": (_ufunc(np.exp), 1), "tanh": (_ufunc(np.tanh), 1),
    "min": (_ufunc(np.minimum), 2), "max": (_ufunc(np.maximum), 2),
    "hypot": (_ufunc(np.hypot), 2), "arctan2": (_ufunc(np.arctan2), 2),
}


def _namespace() -> dict[str, Any]:
    import awkward as ak

    out: dict[str, Any] = dict(FLAT)
    out["J"] = ak.Array(JAGGED["J"])
    out["K"] = ak.Array([[np.int64(v) for v in row] for row in JAGGED["K"]])
    return out


leaf = st.one_of(
    st.sampled_from(["i", "f", "b", "u"]),
    st.sampled_from(["0", "1", "2", "-1", "0.0", "0.5", "1e308", "9223372036854775807", "True", "False", "3"]),
)


def _extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binop = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    power = st.tuples(children, st.sampled_from(["2", "-1", "0.5", "3", "16"])).map(lambda t: f"({t[0]} ** {t[1]})")
    unary = st.tuples(st.sampled_from(["-", "+", "not "]), children).map(lambda t: f"({t[0]}{t[1]})")
    compare = st.tuples(children, st.sampled_from(["<", "<=", "==", "!=", ">", ">="]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    boolean = st.tuples(children, st.sampled_from(["and", "or"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    call1 = st.tuples(st.sampled_from([k for k, v in _FUNCS.items() if v[1] == 1]), children).map(lambda t: f"{t[0]}({t[1]})")
    call2 = st.tuples(st.sampled_from([k for k, v in _FUNCS.items() if v[1] == 2]), children, children).map(
        lambda t: f"{t[0]}({t[1]}, {t[2]})")
    index = st.tuples(st.sampled_from(["J", "K"]), children).map(lambda t: f"{t[0]}[{t[1]}]")
    return st.one_of(binop, power, unary, compare, boolean, call1, call2, index)


expressions = st.recursive(leaf, _extend, max_leaves=8)


class _Missing:
    """A missing element (out-of-range index): propagates through every operation."""


MISSING = _Missing()


def _ref_value(name: str, e: int) -> Any:
    return float(FLAT[name][e])


def _ref_binop(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b if not (math.isinf(a) and b == 0 or math.isinf(b) and a == 0) else math.nan
    if op == "/":
        return a / b if b != 0 else (math.nan if a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1, b))
    if b == 0:  # python raises where IEEE division gives inf/NaN
        return math.nan if op == "%" or a == 0 or a != a else math.copysign(math.inf, a) * math.copysign(1, b)
    return a // b if op == "//" else a % b  # python's float floor division and modulo (not numpy's)


def _exact(node: Any, e: int) -> int | None:
    """The exact integer value of an integer or boolean leaf, None for anything else."""
    import ast

    if isinstance(node, ast.Name) and FLAT[node.id].dtype.kind in "iub":
        return int(FLAT[node.id][e])
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return int(node.value)
    return None


def _reference(node: Any, e: int) -> Any:
    """Per-event evaluation on python floats; MISSING for an element that is not there."""
    import ast

    if isinstance(node, ast.Name):
        return _ref_value(node.id, e)
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.UnaryOp):
        x = _reference(node.operand, e)
        if x is MISSING:
            return MISSING
        return float(not x) if isinstance(node.op, ast.Not) else (-x if isinstance(node.op, ast.USub) else x)
    if isinstance(node, ast.BinOp):
        a = _reference(node.left, e)
        b = _reference(node.right, e)
        if a is MISSING or b is MISSING:
            return MISSING
        if isinstance(node.op, ast.Pow):
            # numpy's array power (not C's pow) is the semantics: (-inf) ** 0.5 is NaN there
            with np.errstate(all="ignore"):
                return float(np.power(np.full(N, a), np.float64(b))[0])
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}[type(node.op)]
        return _ref_binop(op, a, b)
    if isinstance(node, ast.Compare):
        a = _reference(node.left, e)
        b = _reference(node.comparators[0], e)
        if a is MISSING or b is MISSING:
            return MISSING
        exact = (_exact(node.left, e), _exact(node.comparators[0], e))
        if None not in exact:  # integers compare exactly (no rounding to float64 first)
            a, b = exact
        ops = {ast.Lt: a < b, ast.LtE: a <= b, ast.Eq: a == b, ast.NotEq: a != b, ast.Gt: a > b, ast.GtE: a >= b}
        return float(ops[type(node.ops[0])])
    if isinstance(node, ast.BoolOp):
        a = _reference(node.values[0], e)
        b = _reference(node.values[1], e)
        if a is MISSING or b is MISSING:
            return MISSING
        return float(bool(a) and bool(b)) if isinstance(node.op, ast.And) else float(bool(a) or bool(b))
    if isinstance(node, ast.Call):
        args = [_reference(a, e) for a in node.args]
        if any(a is MISSING for a in args):
            return MISSING
        func = _FUNCS[node.func.id][0]
        try:
            return float(func(*args))
        except (ValueError, OverflowError):
            return math.nan
    if isinstance(node, ast.Subscript):
        row = JAGGED[node.value.id][e]
        k = _reference(node.slice, e)
        if k is MISSING or not math.isfinite(k) or k != math.floor(k) or not 0 <= k < len(row):
            return MISSING
        return float(row[int(k)])
    raise AssertionError(node)


def _close(got: float, want: Any) -> bool:
    if want is MISSING:
        return math.isnan(got)
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    if math.isinf(want) or math.isinf(got):
        return want == got
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-300)


@fuzz_settings(200, share=1.0)
@given(text=expressions)
def test_fuzz_expression_trees_match_an_independent_evaluation(text):
    import ast

    from fedhex_hep.extraction.expressions import ExpressionError, compile_expression
    from fedhex_hep.processors.extraction import _per_event

    try:
        expr = compile_expression(text)
        column = _per_event(expr.evaluate(_namespace()), N, "feature", expr)
    except ExpressionError as exc:
        assert_one_line(exc)
        return
    tree = ast.parse(text, mode="eval").body
    for e in range(N):
        want = _reference(tree, e)
        assert _close(float(column[e]), want), (text, e, column[e], want)


@fuzz_settings(100, share=0.5)
@given(text=st.text(alphabet=st.sampled_from(list("ijfbJK0123456789.+-*/%<>=!()[], _andornotsqrtabsexp\"'\\:@~^&|{}#")), max_size=60))
def test_fuzz_expression_text(text):
    from fedhex_hep.extraction.expressions import ExpressionError, compile_expression
    from fedhex_hep.processors.extraction import _per_event

    try:
        expr = compile_expression(text)
        _per_event(expr.evaluate(_namespace()), N, "feature", expr)
    except ExpressionError as exc:
        assert_one_line(exc)


# ------------------------------------------------------------------ damaged ROOT files
@pytest.fixture(scope="module")
def root_reference(tmp_path_factory):
    """A small ROOT file, its bytes and its extraction (the reference for a file read despite damage)."""
    from fedhex_hep.extraction.runner import extract

    path = write_small_root(tmp_path_factory.mktemp("fuzzroot") / "Phi_1000_omega_1" / "nano_0.root", n_events=200)
    return path.read_bytes(), extract(small_config([path], **{"input.skip_bad_files": False}), progress=False)


damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.just(())),
    st.tuples(st.just("flip"), st.just(0.0), st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), min_size=1, max_size=6)),
)


def _damage(data: bytes, how: tuple) -> bytes:
    kind, cut, flips = how
    if kind == "truncate":
        return data[: int(cut * (len(data) - 1))]
    out = bytearray(data)
    for where, mask in flips:
        out[int(where * (len(out) - 1))] ^= mask
    return bytes(out)


@fuzz_settings(40, share=0.1)
@given(how=damage)
def test_fuzz_damaged_root_file(root_reference, how):
    from fedhex_hep.extraction.runner import extract

    original, reference = root_reference
    data = _damage(original, how)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Phi_1000_omega_1" / "nano_0.root"
        path.parent.mkdir()
        path.write_bytes(data)
        try:
            fs = extract(small_config([path], **{"input.skip_bad_files": False}), progress=False)
        except FedhexError as exc:
            text = assert_one_line(exc)
            assert str(path) in text or "branch" in text or "selection" in text, text
            event(f"refused: {type(exc).__name__}")
            return
    event("read: identical to the undamaged file")
    # read despite the damage: exactly the events of the undamaged file
    np.testing.assert_array_equal(fs.features, reference.features)
    np.testing.assert_array_equal(fs.labels, reference.labels)
    np.testing.assert_array_equal(fs.weights, reference.weights)


# ------------------------------------------------------------------ damaged saved models
@pytest.fixture(scope="module")
def model_reference(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from fedhex_hep.model.storage import load_model
    from fedhex_hep.model.training import train

    path = tmp_path_factory.mktemp("fuzzmodel") / "m"
    train(toy_featureset(), toy_model_config(), path, progress=False)
    model = load_model(path)
    files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file() and "checkpoints" not in p.parts
                   and p.name not in ("loss.png", "history.csv", "versions.json"))
    return path, files, model.flow.get_weights(), model.preprocessor.to_json()


@fuzz_settings(40, share=0.1)
@given(which=st.integers(0, 100), how=damage)
def test_fuzz_damaged_model(model_reference, which, how):
    from fedhex_hep.model.storage import load_model

    path, files, weights, preprocessing = model_reference
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(shutil.copytree(path, Path(tmp) / "m"))
        target = copy / files[which % len(files)]
        target.write_bytes(_damage(target.read_bytes(), how))
        try:
            model = load_model(copy)
        except FedhexError as exc:
            text = assert_one_line(exc)
            assert str(copy) in text, text
            event(f"refused: {type(exc).__name__}")
            return
    event("loaded: identical model")
    # loaded despite the damage: the same model, bit for bit
    assert model.preprocessor.to_json() == preprocessing
    for a, b in zip(model.flow.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
