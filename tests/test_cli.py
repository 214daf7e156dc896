"""The command line: verbs, help, instant start-up, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

VERBS = ["make-samples", "extract", "train", "generate", "export", "compare", "validate", "run"]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedhex_hep.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_lists_every_verb():
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in VERBS:
        assert verb in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb):
    result = run_cli(verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_help_does_not_import_heavy_packages():
    # pyhf-style start-up guarantee without timing: TensorFlow and coffea stay unimported.
    code = (
        "import sys, json\n"
        "from fedhex_hep.cli.app import app\n"
        "try:\n"
        "    app(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in ('tensorflow', 'coffea', 'tensorflow_probability', 'matplotlib', 'dask') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("fedhex-hep ")


def test_config_error_is_one_line_naming_the_key(tmp_path):
    result = run_cli("extract", "--set", "training.epocs=3", "--output", str(tmp_path / "f.parquet"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "training.epocs" in lines[0] and "did you mean 'training.epochs'" in lines[0]


def test_missing_config_file_is_named(tmp_path):
    result = run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "nope.toml does not exist" in result.stderr


def test_existing_output_is_refused(tmp_path):
    target = tmp_path / "features.parquet"
    target.write_text("keep me")
    result = run_cli("extract", "--output", str(target))
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert target.read_text() == "keep me"
