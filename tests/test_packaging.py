"""The package installs under one name: ``fedhex_hep`` (processors as ``fedhex_hep.processors``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_an_analysis_with_its_own_processors_package_imports_ours(tmp_path: Path) -> None:
    own = tmp_path / "processors"
    own.mkdir()
    (own / "__init__.py").write_text("OWNER = 'the analysis'\n")
    (own / "extraction.py").write_text("class FeatureProcessor:\n    pass\n")
    code = (
        "import processors, processors.extraction\n"
        "assert processors.OWNER == 'the analysis', processors.__file__\n"
        "from fedhex_hep.processors.extraction import FeatureProcessor\n"
        "from fedhex_hep.processors.generation import FlowTemplateProcessor\n"
        "assert FeatureProcessor is not processors.extraction.FeatureProcessor\n"
        "assert FeatureProcessor.__module__ == 'fedhex_hep.processors.extraction'\n"
        "print('both')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "both"


@pytest.mark.slow
def test_the_wheel_holds_no_top_level_processors_package(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("fedhex_hep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"fedhex_hep", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for module in ("extraction", "generation"):
        assert f"fedhex_hep/processors/{module}.py" in names
    assert "fedhex_hep/default.toml" in names
