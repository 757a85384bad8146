"""The manual's own directive: the settings table, made from the code at build time.

``settings-table`` renders ``isstreamer_jupyter._config.settings_table()``. The page holds no
copy of the table, so the table cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from isstreamer_jupyter._config import settings_table


def table_text() -> str:
    """The Markdown the ``settings-table`` directive renders."""
    return settings_table()


class SettingsTable(SphinxDirective):
    """Renders the settings table the code describes."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        parsed = list(self.parse_text_to_nodes(table_text()))
        for node in parsed:
            for table in node.findall(nodes.table):
                table["classes"].append("settings-table")  # its column widths: tables.css
        return parsed


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("settings-table", SettingsTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
