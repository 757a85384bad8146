"""The package's metadata is in the form setuptools keeps supporting (PEP 639), with a build
requirement that supports it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_license_is_an_spdx_expression_with_its_file():
    """`license = { text = "MIT" }` made every install print setuptools' deprecation wall."""
    meta = importlib.metadata.distribution("isstreamer_jupyter").metadata
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_the_build_needs_a_setuptools_that_reads_that_form():
    """setuptools reads `license = "MIT"` and `license-files` from 77.0 (77.0.3: without
    failing on an older `packaging` beside it); 76 refuses the project."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    low = re.search(r'^requires = \["setuptools>=([0-9.]+),<([0-9]+)"\]', pyproject, re.M)
    assert low, "the build requirement names setuptools with a lower and an upper bound"
    assert tuple(map(int, low.group(1).split("."))) >= (77, 0, 3)


def test_the_wheel_holds_every_module_and_the_typed_marker(tmp_path):
    """`packages = ["isstreamer_jupyter"]` left the _sender and _magics subpackages out of the
    wheel: an install from it could not import the package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # (from a copy: setuptools reuses a build/ folder it finds, with the last build's files)
    source = tmp_path / "source"
    shutil.copytree(ROOT / "isstreamer_jupyter", source / "isstreamer_jupyter",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(source)], check=True,
                   timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("isstreamer_jupyter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "isstreamer_jupyter"
    sources = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert "isstreamer_jupyter/py.typed" in names
