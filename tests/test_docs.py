"""The manual: size, no development history, links that resolve, code that compiles, and the
tutorial's example files loading with the package's own parsers."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOC_FILES = [README, REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLES = REPO / "docs" / "examples"

# Built from pieces so that this file does not match its own pattern.
HISTORY = "(first|second|third|[a-z]+th) " + "session|iss" + "ue [0-9]|old " + "approach"
DOCS_PATHS = ["README.md", "ARCHITECTURE.md", "docs", "benchmarks"]

SETUP_RUN = "python3 -m venv .venv && . .venv/bin/activate && pip install -q . && fedhex-hep run"
SETUP_TEST = 'python3 -m venv .venv && . .venv/bin/activate && pip install -q ".[test]" && python -m pytest'

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)


def _git_grep(*paths: str) -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the history check greps tracked files")
    proc = subprocess.run(
        ["git", "grep", "-n", "-I", "-i", "-E", HISTORY, "--", *paths],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1 = no match
    return proc.stdout.splitlines()


def test_readme_is_a_manual_not_a_notebook():
    assert README.stat().st_size <= 15_000


def test_readme_keeps_the_two_setup_commands():
    """CI runs the second command; both must stay byte-identical."""
    lines = README.read_text().splitlines()
    assert SETUP_RUN in lines and SETUP_TEST in lines


def test_readme_gives_the_command_that_remakes_the_demo_grid():
    from fedhex_hep.io.samples import DEMO_COMMAND

    assert DEMO_COMMAND in README.read_text()


def test_history_pattern_catches_history():
    text = "measured in the ninth sess" + "ion; see iss" + "ue 6 (the old appro" + "ach)"
    assert len(re.findall(HISTORY, text, flags=re.I)) == 3


def test_no_development_history_in_the_docs():
    assert _git_grep(*DOCS_PATHS) == []


def test_no_development_history_in_the_repository():
    assert _git_grep(".", ":!data") == []


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_files_in_the_repository(doc):
    targets = LINK.findall(doc.read_text())
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same file
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or REPO not in path.parents:
            broken.append(target)
    assert broken == []


ARCHITECTURE = REPO / "ARCHITECTURE.md"


def test_architecture_names_every_stage_folder():
    """The one-page map matches the tree: every sub-package of fedhex_hep/ has its row."""
    text = ARCHITECTURE.read_text()
    folders = [p.name for p in (REPO / "fedhex_hep").iterdir() if (p / "__init__.py").is_file() and not p.is_symlink()]
    assert len(folders) >= 5
    assert [f for f in folders if f"`fedhex_hep/{f}/`" not in text] == []
    assert "`processors/`" in text and "`fedhex_hep/errors.py`" in text and "`fedhex_hep/config.py`" in text


def test_architecture_paths_exist():
    paths = set(re.findall(r"`((?:fedhex_hep|processors|benchmarks|tests)/[\w/.]*)`", ARCHITECTURE.read_text()))
    assert paths and sorted(p for p in paths if not (REPO / p).exists()) == []


def test_readme_links_the_reference_pages():
    targets = set(LINK.findall(README.read_text()))
    assert {"docs/configuration.md", "docs/results.md", "ARCHITECTURE.md"} <= targets


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_code_fences_are_balanced(doc):
    """A fence line is a bare ``` or ```lang: text after a closing fence would swallow a paragraph."""
    fences = [line for line in doc.read_text().splitlines() if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0
    assert all(re.fullmatch(r"\s*```\w*", line) for line in fences), fences


def test_readme_python_examples_compile():
    """Every ```python block of the README is meant to run; at least it must compile."""
    blocks = [code for lang, code in FENCE.findall(README.read_text()) if lang == "python"]
    assert len(blocks) >= 2
    for i, code in enumerate(blocks):
        compile(code, f"README.md python block {i}", "exec")


def test_config_reference_names_every_default_key():
    """docs/configuration.md lists every key of default.toml (one table row per key)."""
    import tomllib

    from fedhex_hep.config import default_config_text

    text = (REPO / "docs" / "configuration.md").read_text()
    defaults = tomllib.loads(default_config_text())
    missing = []
    for section, table in defaults.items():
        if section == "preprocessing":
            continue  # per-column tables: documented by their keys (relative_to, transform, ...)
        for key, value in table.items():
            row = f"| `{key}." if isinstance(value, dict) else f"| `{key}` |"
            if row not in text and f"| `{key}` |" not in text:
                missing.append(f"{section}.{key}")
    assert missing == []


def test_example_config_and_fileset_load(monkeypatch):
    """The tutorial's files parse; each label reads the fileset's metadata, not a branch."""
    from fedhex_hep.config import load_config
    from fedhex_hep.extraction.expressions import compile_expression
    from fedhex_hep.io.fileset import build_fileset

    monkeypatch.chdir(EXAMPLES)  # the tutorial runs from the folder that holds both files
    config = load_config("zprime.toml")
    assert config.input.schema == "nanoaod" and config.input.weight == "genWeight"
    assert config.feature_names == ["mll", "ptll"] and config.label_names == ["mZp"]
    assert config.preprocessing.features["mll"].relative_to == "mZp"
    assert all(len(point) == 1 for point in config.generation.labels)

    fileset = build_fileset(config.input.paths, config.input.treename, config.input.max_depth)
    assert len(fileset) == 4
    for dataset, entry in fileset.items():
        assert entry["metadata"]["mZp"] == float(dataset.rsplit("_M", 1)[1])
        for name, expr in config.input.labels.items():
            assert compile_expression(expr).names <= set(entry["metadata"])
        for path, tree in entry["files"].items():
            assert tree == "Events"
            assert "://" in path or Path(path).resolve().is_relative_to(EXAMPLES.resolve())  # against the JSON's folder


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_example_config_extracts_real_nanoaod(nanoaod_dir, tmp_path):
    """The tutorial's expressions on real CMS NanoAOD: labels from metadata, features finite."""
    import json

    import uproot

    from fedhex_hep.config import load_config
    from fedhex_hep.extraction.runner import extract

    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"dy": {"files": [str(nanoaod_dir / "nano_dy.root")], "metadata": {"mZp": 91.0}}}))
    selection = "nMuon >= 2 and Muon_charge[0] * Muon_charge[1] < 0"  # the example's pt cuts leave few of 40 events
    config = load_config(
        EXAMPLES / "zprime.toml",
        overrides={"input.paths": [str(fileset)], "input.selection": selection, "input.min_events_per_label": 0},
    )
    features = extract(config, progress=False)

    events = uproot.open(nanoaod_dir / "nano_dy.root")["Events"].arrays(["nMuon", "Muon_charge", "genWeight"])
    two = events[events.nMuon >= 2]
    opposite = (two.Muon_charge[:, 0] * two.Muon_charge[:, 1]) < 0
    assert len(features) == int(np.sum(opposite)) > 0
    np.testing.assert_array_equal(features.column("mZp"), 91.0)
    np.testing.assert_allclose(features.weights, np.asarray(two.genWeight[opposite], dtype=np.float64))
    assert np.all(np.isfinite(features.column("mll"))) and np.all(features.column("ptll") > 0)
