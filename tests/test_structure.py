"""The code reads as the pipeline: short functions, one home per concept, one error base."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import fedhex_hep
from fedhex_hep.errors import FedhexError

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _python_files() -> list[Path]:
    return sorted([*(ROOT / "fedhex_hep").rglob("*.py"), *(ROOT / "processors").glob("*.py")])


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_function_is_longer_than_the_limit() -> None:
    files = [p for p in _python_files() if not (ROOT / "fedhex_hep" / "processors") in p.parents]
    assert files, "no source files found"
    offenders = [entry for path in files for entry in _long_functions(path)]
    assert not offenders, "split into named steps:\n" + "\n".join(offenders)


def test_the_length_check_sees_a_long_function(tmp_path: Path) -> None:
    """A function of exactly the limit passes; a method one line longer is reported."""
    short = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    long = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = tmp_path / "long.py"
    source.write_text(f"def short():\n{short}\n\n\nclass A:\n    def long(self):\n{long}\n", encoding="utf-8")
    assert _long_functions(source) == [f"long.py:{MAX_FUNCTION_LINES + 4} long ({MAX_FUNCTION_LINES + 1} lines)"]


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(fedhex_hep.__path__, "fedhex_hep.")]
    return [n for n in names if not n.endswith("__main__")]


def test_every_error_class_derives_from_fedhex_error() -> None:
    stray = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)
                and not issubclass(obj, Warning)
                and obj.__module__ == module.__name__
                and not issubclass(obj, FedhexError)
            ):
                stray.append(f"{name}.{attr}")
    assert not stray, f"errors that do not derive from FedhexError: {stray}"


def test_one_home_for_mass_point_names_and_bin_edges() -> None:
    """Point tags and automatic bin edges are written in naming.py and binning.py only."""
    patterns = {
        'replace(".", "p")': "naming.py",
        "np.quantile(ref, [0.005": "binning.py",
    }
    for pattern, home in patterns.items():
        where = [p.name for p in _python_files() if pattern in p.read_text(encoding="utf-8")]
        assert set(where) <= {home}, f"{pattern!r} written outside {home}: {where}"
