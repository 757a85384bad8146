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
