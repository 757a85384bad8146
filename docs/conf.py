"""Sphinx configuration of the manual. `make docs` builds it; the build reads no network."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

from isstreamer_jupyter import __version__  # noqa: E402

project = "isstreamer_jupyter"
author = "isstreamer_jupyter contributors"
copyright = "isstreamer_jupyter contributors"
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "isj_docs",
]

exclude_patterns = ["**/.ipynb_checkpoints"]

# The notebooks are pages from their saved outputs: nbval executes them in `make test`.
nb_execution_mode = "off"
# A saved widget would need its JavaScript from a CDN; its text form reads offline.
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_ipywidgets_js: dict[str, dict[str, str]] = {}

myst_enable_extensions = ["deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

html_theme = "furo"
html_title = f"isstreamer_jupyter {release}"
html_static_path = ["_static"]
html_css_files = ["tables.css"]
html_show_sourcelink = False
