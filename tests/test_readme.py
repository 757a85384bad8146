"""The README says what the code does: its settings table and its quickstart are tested."""

from __future__ import annotations

import re
from pathlib import Path

from isstreamer_jupyter._config import settings_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_settings_table_is_the_one_the_code_describes():
    assert settings_table() in README


def test_quickstart_example_runs_against_the_receiver(make_receiver, monkeypatch, tmp_path):
    rx = make_receiver()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IS_ACCESS_KEY", "readme-test-key")
    monkeypatch.setenv("IS_API_BASE", rx.api_base)
    monkeypatch.setenv("IS_MAX_RPS", "0")
    monkeypatch.setenv("IS_SPOOL_DIR", str(tmp_path / "spool"))
    example = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    exec(compile(example, "README.md quickstart", "exec"), {})
    got = [(e["key"], e["value"]) for e in rx.events()]
    assert got == [("temperature", 21.5), ("greenhouse_humidity", 0.41),
                   ("greenhouse_fan_on", True)]
    assert rx.buckets.popitem()[1] == "Greenhouse"


def test_two_setup_commands_are_the_makefiles():
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "make run" in README and "make test" in README
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in ci


def test_readme_names_only_the_ini_sections_that_are_read_and_fully():
    """`[client_config]` in the README led users to a section that is never read."""
    from isstreamer_jupyter._config import API, CLIENT

    start = README.index("| keyword | environment |")
    table = README[start:README.index("\n\n", start)]
    named = set(re.findall(r"\[([\w.]+)\]", table))
    assert named == {CLIENT, API}, named
