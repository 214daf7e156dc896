"""The safe expression language: grammar, jagged indexing, refusals, property-based tests."""

from __future__ import annotations

import pickle

import awkward as ak
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhex_hep.extraction.expressions import FUNCTIONS, MAX_EXPONENT, ExpressionError, compile_expression

X = ak.Array([[10.0, 20.0, 30.0], [40.0], [], [50.0, 60.0], [70.0]])
NS = {
    "a": np.array([1.5, -2.0, 0.0, 4.0, 9.0]),
    "b": np.array([0.5, 3.0, -1.0, 0.0, 2.0]),
    "k": np.array([0, 1, 2, -1, 0]),
    "X": X,
    "mass": 1870.0,
}


def values(result, n=5):
    """(values with NaN for missing, missing mask) of an evaluation result."""
    if isinstance(result, ak.Array):
        missing = ak.to_numpy(ak.is_none(result, axis=0))
        filled = ak.to_numpy(ak.fill_none(ak.values_astype(result, np.float64), np.nan))
        return filled, missing
    arr = np.broadcast_to(np.asarray(result, dtype=np.float64), (n,))
    return arr, np.zeros(n, dtype=bool)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a + b * 2", NS["a"] + NS["b"] * 2),
        ("a ** 2", NS["a"] ** 2),
        ("b ** -1", np.divide(1.0, NS["b"], out=np.full(5, np.inf), where=NS["b"] != 0)),
        ("a // 2 + a % 2", NS["a"] // 2 + NS["a"] % 2),
        ("-a", -NS["a"]),
        ("abs(b) + sqrt(abs(a))", np.abs(NS["b"]) + np.sqrt(np.abs(NS["a"]))),
        ("min(a, b) + max(a, b)", NS["a"] + NS["b"]),
        ("mass * a", 1870.0 * NS["a"]),
        ("0 < a < 5", (NS["a"] > 0) & (NS["a"] < 5)),
        ("a > 0 and b > 0 or a == 0", ((NS["a"] > 0) & (NS["b"] > 0)) | (NS["a"] == 0)),
        ("not a > 0", ~(NS["a"] > 0)),
        ("(a > 0) * 3", (NS["a"] > 0) * 3.0),
    ],
)
def test_grammar_matches_numpy(text, expected):
    with np.errstate(all="ignore"):
        got, missing = values(compile_expression(text).evaluate(NS))
    assert not missing.any()
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), equal_nan=True)


def test_names_lists_only_referenced_names():
    expr = compile_expression("sqrt(a) + X[k] * mass > 2 and b != 1")
    assert expr.names == frozenset({"a", "X", "k", "mass", "b"})


def test_constant_index_picks_element_or_missing():
    got, missing = values(compile_expression("X[0]").evaluate(NS))
    assert missing.tolist() == [False, False, True, False, False]
    np.testing.assert_array_equal(got[~missing], [10.0, 40.0, 50.0, 70.0])
    got, missing = values(compile_expression("X[1]").evaluate(NS))
    assert missing.tolist() == [False, True, True, False, True]
    np.testing.assert_array_equal(got[~missing], [20.0, 60.0])


def test_per_event_index_and_negative_index_is_missing():
    # k = [0, 1, 2, -1, 0]: event 1 has one element (index 1 out of range), event 3 has k = -1
    got, missing = values(compile_expression("X[k]").evaluate(NS))
    assert missing.tolist() == [False, True, True, True, False]
    np.testing.assert_array_equal(got[~missing], [10.0, 70.0])
    # -1 is "no candidate" (HEP convention), not "the last element"
    _, missing = values(compile_expression("X[-1]").evaluate(NS))
    assert missing.all()


def test_missing_value_is_false_in_comparison_and_propagates():
    result = compile_expression("X[1] > 0 and a > -10").evaluate(NS)
    assert ak.fill_none(result, False).tolist() == [True, False, False, True, False]


def test_index_of_flat_value_is_refused():
    with pytest.raises(ExpressionError, match="'a' is not a list per event"):
        compile_expression("a[0]").evaluate(NS)


def test_unknown_name_named():
    with pytest.raises(ExpressionError, match="unknown name 'nope'"):
        compile_expression("a + nope").evaluate(NS)


def test_division_by_zero_gives_inf_not_warning():
    got, _ = values(compile_expression("1 / b").evaluate(NS))
    assert np.isinf(got[3])


def test_pickle_roundtrip_rechecks():
    expr = compile_expression("a + 1")
    clone = pickle.loads(pickle.dumps(expr))
    assert clone.text == "a + 1"
    np.testing.assert_array_equal(clone.evaluate(NS), NS["a"] + 1)


MALICIOUS = [
    ("__import__('os')", "function '__import__' is not allowed"),
    ("__import__('os').system('echo hi')", "calling attribute access is not allowed"),
    ("().__class__", "attribute access"),
    ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("a.b", "attribute access"),
    ("lambda: 1", "lambda"),
    ("open('x')", "function 'open' is not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("getattr(a, 'b')", "function 'getattr' is not allowed"),
    ("2**10**10", "non-constant exponent"),
    ("a ** 1000", "exponent 1000"),
    ("a ** b", "non-constant exponent"),
    ("9**9**9**9", "non-constant exponent"),
    ("__builtins__", "dunder name"),
    ("a.__dict__", "attribute access"),
    ("[x for x in a]", "list comprehension"),
    ("{x: 1 for x in a}", "dict comprehension"),
    ("(x for x in a)", "generator expression"),
    ("'rm -rf'", "string constant"),
    ("b'x'", "bytes constant"),
    ("f'{a}'", "f-string"),
    ("(a := 1)", "assignment expression"),
    ("a if b else 1", "conditional expression"),
    ("X[0:2]", "slice"),
    ("X[0, 1]", "tuple"),
    ("sqrt(*a)", "starred"),
    ("sqrt(x=a)", "keyword arguments"),
    ("a in X", "comparison In"),
    ("a is None", "comparison Is"),
    ("None", "None"),
    ("1j", "complex number"),
    ("sqrt", "used as a value"),
    ("sqrt(a)(1)", "calling Call"),
    ("a @ b", "operator MatMult"),
    ("a << 2", "operator LShift"),
    ("~a", "operator Invert"),
    ("import os", "invalid syntax"),
    ("a; b", "invalid syntax"),
    ("", "empty"),
    ("9" * 40, "too large"),
    ("a" + " + a" * 600, "too complex"),
    ("(" * 300 + "a" + ")" * 300, ""),
]


@pytest.mark.parametrize("text, reason", MALICIOUS)
def test_malicious_expressions_refused_before_evaluation(text, reason):
    class Tripwire(dict):
        def __getitem__(self, key):  # evaluation must never start
            raise AssertionError("evaluation started")

    with pytest.raises(ExpressionError, match=None) as info:
        compile_expression(text).evaluate(Tripwire())
    assert reason.lower() in str(info.value).lower()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Property-based test: random expression trees over a small grammar, a few constructs of which
# are forbidden. Each expression either evaluates exactly like an independent numpy evaluation
# of the same tree (allowed constructs only) or is refused with ExpressionError (any forbidden
# construct present). Nothing else may happen.

A = NS["a"]
B = NS["b"]
N = len(A)

FORBIDDEN_CALLS = ["eval", "exec", "open", "getattr", "__import__", "print", "compile"]
UNARY_FUNCS = ["abs", "sqrt", "log", "exp", "cos", "cosh", "tanh"]
BIN_OPS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.true_divide}
CMP_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal}


def _pick(index):
    counts = np.array([len(x) for x in X.tolist()])
    vals = np.array([x[index] if 0 <= index < len(x) else np.nan for x in X.tolist()])
    return vals, ~((index >= 0) & (index < counts))


# A node is (text, forbidden: bool, kind: "num"|"bool", reference value, missing mask).
def leaf():
    names = st.sampled_from(
        [("a", A, np.zeros(N, bool)), ("b", B, np.zeros(N, bool)), ("mass", np.full(N, 1870.0), np.zeros(N, bool))]
    ).map(lambda t: (t[0], False, "num", t[1], t[2]))
    ints = st.integers(-5, 5).map(lambda i: (f"({i})", False, "num", np.full(N, float(i)), np.zeros(N, bool)))
    floats = st.floats(-100, 100, allow_nan=False).map(
        lambda f: (f"({f!r})", False, "num", np.full(N, f), np.zeros(N, bool))
    )
    picks = st.integers(-2, 3).map(lambda i: (f"X[{i}]", False, "num", *_pick(i)))
    dunder = st.just(("__class__", True, "num", None, None))
    return st.one_of(names, ints, floats, picks, dunder)


def combine(children):
    def binop(t):
        (op, (l, r)) = t
        return (f"({l[0]} {op} {r[0]})", l[1] or r[1], "num", _ref(BIN_OPS[op], l, r), _miss(l, r))

    def power(t):
        (base, e) = t
        forbidden = base[1] or abs(e) > MAX_EXPONENT
        return (f"({base[0]} ** {e})", forbidden, "num", _ref(lambda x: np.power(x, float(e)), base), _miss(base))

    def func(t):
        (name, arg) = t
        forbidden = arg[1] or name not in FUNCTIONS
        ref = _ref(FUNCTIONS[name][0], arg) if name in FUNCTIONS else None
        return (f"{name}({arg[0]})", forbidden, "num", ref, _miss(arg))

    def compare(t):
        (op, (l, r)) = t
        return (f"({l[0]} {op} {r[0]})", l[1] or r[1], "bool", _ref(CMP_OPS[op], l, r), _miss(l, r))

    def boolop(t):
        (op, (l, r)) = t
        fn = np.logical_and if op == "and" else np.logical_or
        return (f"({l[0]} {op} {r[0]})", l[1] or r[1], "bool", _ref(fn, l, r), _miss(l, r))

    def attribute(t):
        return (f"{t[0]}.real", True, "num", None, None)

    def negate(t):
        return (f"(-{t[0]})", t[1], "num", _ref(np.negative, t), _miss(t))

    def notop(t):
        return (f"(not {t[0]})", t[1], "bool", _ref(np.logical_not, t), _miss(t))

    nums = children.filter(lambda c: c[2] == "num")
    bools = children.filter(lambda c: c[2] == "bool")
    return st.one_of(
        st.tuples(st.sampled_from(list(BIN_OPS)), st.tuples(nums, nums)).map(binop),
        st.tuples(nums, st.integers(-20, 20)).map(power),
        st.tuples(st.sampled_from(UNARY_FUNCS + FORBIDDEN_CALLS), nums).map(func),
        st.tuples(st.sampled_from(list(CMP_OPS)), st.tuples(nums, nums)).map(compare),
        st.tuples(st.sampled_from(["and", "or"]), st.tuples(bools, bools)).map(boolop),
        nums.map(attribute),
        nums.map(negate),
        bools.map(notop),
    )


def _ref(fn, *nodes):
    if any(n[3] is None for n in nodes):
        return None
    with np.errstate(all="ignore"):
        return fn(*[n[3] for n in nodes])


def _miss(*nodes):
    if any(n[4] is None for n in nodes):
        return None
    return np.logical_or.reduce([n[4] for n in nodes])


TREES = st.recursive(leaf(), combine, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(TREES)
def test_property_evaluates_like_numpy_or_is_refused(tree):
    text, forbidden, _, reference, missing = tree
    if forbidden:
        with pytest.raises(ExpressionError):
            compile_expression(text).evaluate(NS)
        return
    got, got_missing = values(compile_expression(text).evaluate(NS))
    np.testing.assert_array_equal(got_missing, missing, err_msg=text)
    ref = np.broadcast_to(np.asarray(reference, dtype=np.float64), (N,))
    np.testing.assert_allclose(got[~missing], ref[~missing], rtol=1e-12, atol=0, equal_nan=True, err_msg=text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab()[]_.+-*/%<>=!,:'\"0123456789 xsqrtlambdaimport")), max_size=40))
def test_property_arbitrary_text_is_checked_or_refused(text):
    """Any text either compiles to a checked expression or raises ExpressionError -- never more."""
    try:
        expr = compile_expression(text)
    except ExpressionError as exc:
        assert "\n" not in str(exc)
        return
    assert all(not n.startswith("__") for n in expr.names)
