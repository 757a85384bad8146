"""The README and the manual say what the code does: their tables and examples are tested.

The README is the front door. The reference lives in the manual's pages, docs/*.md.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from isstreamer_jupyter._config import settings_table

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
PAGES = {path.stem: path.read_text() for path in sorted(DOCS.glob("*.md"))}
TEXTS = {"README.md": README, **{f"docs/{name}.md": text for name, text in PAGES.items()}}


def page(name: str) -> str:
    return PAGES[name]


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _docs_extension():
    spec = importlib.util.spec_from_file_location("isj_docs", DOCS / "_ext" / "isj_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_table_is_the_one_the_code_describes():
    """The settings page renders settings_table() at build time; no page keeps a copy."""
    assert _docs_extension().table_text() == settings_table()
    assert "```{settings-table}\n```" in page("settings")
    copies = [name for name, text in TEXTS.items() if "| keyword | environment |" in text]
    assert copies == []


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # (myst-parser's, on Sphinx 9)
def test_the_settings_page_built_holds_every_setting(tmp_path):
    """The directive, run by Sphinx as `make docs` runs it, gives one row per setting."""
    from sphinx.application import Sphinx

    from isstreamer_jupyter._config import SETTINGS

    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        f"extensions = ['myst_parser', 'isj_docs']\nroot_doc = 'settings'\n")
    (src / "settings.md").write_text(page("settings"))
    app = Sphinx(str(src), str(src), str(tmp_path / "out"), str(tmp_path / "doctrees"), "html",
                 status=None, warning=None, freshenv=True)
    app.build()
    html = (tmp_path / "out" / "settings.html").read_text()
    table = re.search(r'<table class="[^"]*settings-table.*?</table>', html, re.S).group(0)
    rows = re.findall(r"<tr[^>]*>\s*<td[^>]*><p><code[^>]*><span class=\"pre\">(\w+)</span>",
                      table)
    assert rows == [s.name for s in SETTINGS]


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


DOC_EXAMPLES = [(name, n, code) for name, text in PAGES.items()
                for n, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S))]


@pytest.mark.parametrize(("name", "n", "code"), DOC_EXAMPLES,
                         ids=[f"{name}-{n}" for name, n, _ in DOC_EXAMPLES])
def test_the_manual_s_python_examples_run(make_receiver, monkeypatch, tmp_path, name, n, code):
    """Every ```python block of the manual runs as it is, against the receiver."""
    rx = make_receiver()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("IS_ACCESS_KEY", "docs-test-key")
    monkeypatch.setenv("IS_API_BASE", rx.api_base)
    monkeypatch.setenv("IS_MAX_RPS", "0")
    monkeypatch.setenv("IS_SPOOL_DIR", str(tmp_path / "spool"))
    exec(compile(code, f"docs/{name}.md example {n}", "exec"), {})
    for call in re.findall(r"\.log\(\"(\w+)\", ([\d.]+)\)", code):
        assert (call[0], float(call[1])) in [(e["key"], e["value"]) for e in rx.events()]


def test_two_setup_commands_are_the_makefiles():
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make run" in README and "make test" in README
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in ci
    assert "make docs" in README and re.search(r"^docs:", makefile, re.M)


def test_the_readme_is_the_front_door():
    """At most 10 KB: the pitch, the two commands, a quickstart, the notebooks, the links."""
    assert len(README.encode()) <= 10 * 1024
    assert "![" in README and "(docs/panel.png)" in README
    assert "never shows your access key" in README
    linked = set(re.findall(r"\]\(docs/([\w-]+)\.md\)", README))
    assert linked, "the README links the manual's pages"
    assert linked <= set(PAGES)
    in_toctrees = set(PAGES) - {"index", "results", "changelog"}
    assert in_toctrees - linked == set()


def test_readme_names_only_the_ini_sections_that_are_read_and_fully():
    """`[client_config]` in the README led users to a section that is never read."""
    from isstreamer_jupyter._config import API, CLIENT

    named = set(re.findall(r"\[([\w.]+)\]", settings_table()))
    assert named == {CLIENT, API}, named


def test_api_table_gives_each_method_s_parameters_and_defaults():
    """Each `name(params)` row of the API page's summary says what the method takes, but
    keyword-only options for the package's own callers (flush's `warn`) and set_bucket's
    `retries` (accepted only for ISStreamer's sake), left out on purpose."""
    import ast
    import inspect

    from isstreamer_jupyter import Streamer

    table = _section(page("api"), "Summary")
    rows = re.findall(r"^\| `(\w+)\(([^)]*)\)`", table, re.M)
    assert {name for name, _ in rows} >= {"log", "flush", "close", "upload", "set_bucket"}
    for name, params in rows:
        told = ast.parse(f"def {name}({params}): pass").body[0].args
        said = {a.arg: None for a in told.args}
        said.update({a.arg: ast.literal_eval(d)
                     for a, d in zip(told.args[::-1], told.defaults[::-1], strict=False)})
        real = {p.name: None if p.default is p.empty else p.default
                for p in inspect.signature(getattr(Streamer, name)).parameters.values()
                if p.name != "self" and p.kind is not p.KEYWORD_ONLY
                and (name, p.name) != ("set_bucket", "retries")}
        assert said == real, name


def test_the_stats_table_lists_every_field():
    from isstreamer_jupyter import Stats

    table = _section(page("api"), "`stats()`")
    said = [name for row in re.findall(r"^\| (`\w+`(?:, `\w+`)*) \|", table, re.M)
            for name in re.findall(r"`(\w+)`", row)]
    assert said == [f.name for f in dataclasses.fields(Stats)]


def test_a_date_written_beside_an_epoch_is_that_epoch_s():
    """offline-and-upload.ipynb said 1795000000 was 08:26:40 UTC; it is 11:06:40."""
    import datetime as dt

    texts = [*TEXTS.values()] + [p.read_text()
                                 for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    said = [m.groups() for text in texts for m in re.finditer(
        r"\b([0-9]{9,10})\s*#\s*([0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}) UTC",
        text)]
    assert said  # (the notebook's start time, at least)
    for epoch, date in said:
        assert dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S") == date.replace("T", " "), epoch


def test_no_fix_puts_the_access_key_in_a_cell():
    """The README says the key is never in a notebook cell, yet its fix for a refused key, and
    panel.ipynb, typed it there (`streamer.AccessKey = "..."`)."""
    import json

    cells = ["".join(cell["source"]) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
             for cell in json.loads(p.read_text())["cells"] if cell["cell_type"] == "code"]
    typed = re.compile(r"""AccessKey\s*=\s*[rbf]?["']""")
    assert not [text for text in [*TEXTS.values(), *cells] if typed.search(text)]
    assert 'streamer.AccessKey = os.environ["IS_ACCESS_KEY"]' in page("troubleshooting")


def test_a_notebook_that_sets_a_key_in_a_cell_says_it_is_a_demo_key():
    """panel.ipynb said the key is "never typed into a cell" while its setup cell sets
    IS_ACCESS_KEY (a made-up key for the loopback receiver): its text says what that key is."""
    import json

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        text = " ".join(" ".join("".join(c["source"]) for c in cells
                                 if c["cell_type"] == "markdown").split())
        if 'os.environ["IS_ACCESS_KEY"] =' in code and "never typed into a cell" in code + text:
            assert "demo key" in text, path.name


def _help(capsys, *command: str) -> str:
    from isstreamer_jupyter.__main__ import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text)) - {"--help"}


def test_every_upload_option_is_in_the_manual(capsys):
    """`--batch-size` was in `upload --help` but not in the README."""
    options = _options(_help(capsys, "upload"))
    assert "--batch-size" in options
    upload = _section(page("offline-and-upload"), "Uploading")
    assert [o for o in sorted(options) if f"[{o}" not in upload or f"`{o}" not in upload] == []


@pytest.mark.parametrize("command", ["status", "send", "drop"])
def test_every_spool_option_is_on_the_spool_page(capsys, command):
    options = _options(_help(capsys, "spool", command))
    assert options
    spool = page("spool")
    usage = re.search(rf"^python -m isstreamer_jupyter spool {command}(.*)$", spool, re.M)
    assert usage, command
    shared = {"--spool-dir", "--api-base"}  # (each command takes them; the page says so once)
    assert [o for o in sorted(options) if f"`{o}" not in spool] == [], command
    assert [o for o in sorted(options - shared) if o not in usage.group(1)] == [], command


def _exit_codes(help_text: str) -> list[int]:
    listed = help_text[help_text.index("exit codes:"):]
    return [int(code) for code in re.findall(r"^  (\d+)  ", listed, re.M)]


def _table_codes(section: str) -> list[int]:
    return sorted({int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)})


@pytest.mark.parametrize(("command", "where", "title"), [
    (("upload",), "offline-and-upload", "Exit codes"),
    (("spool", "send"), "spool", "`spool send`"),
    (("spool", "drop"), "spool", "`spool drop`"),
], ids=["upload", "spool send", "spool drop"])
def test_the_exit_code_tables_are_the_commands(capsys, command, where, title):
    """Each command's exit codes are a table in the manual, the same codes its --help gives."""
    told = _exit_codes(_help(capsys, *command))
    assert told, command
    assert _table_codes(_section(page(where), title)) == sorted(told), command


def test_pointing_at_the_receiver_turns_the_pacing_off(capsys):
    """Pointed at the receiver as the README said, 300 rows took 10 s: the default pace is
    Initial State's."""
    told = [p for text in TEXTS.values() for p in text.split("\n\n")
            if "IS_API_BASE=http://127.0.0.1" in p]
    assert told
    assert all("IS_MAX_RPS=0" in p for p in told), told
    assert "IS_MAX_RPS=0" in _help(capsys, "serve")


def test_the_epoch_forms_the_docs_give_are_what_epoch_takes():
    """magics.ipynb and the README's magics table each gave another list of --epoch's units."""
    import datetime as dt
    import json

    from isstreamer_jupyter._events import coerce_epoch

    said = ("seconds, milliseconds, microseconds or nanoseconds since 1970 (told apart by size), "
            "or an ISO 8601 time (`2026-11-28T08:00:00Z`; with no zone, local time)")
    row = re.search(r"^\| `--epoch T` \|(.*)$", page("magics"), re.M).group(1)
    notebook = ROOT / "notebooks" / "magics.ipynb"
    cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"]]
    assert said in row and [c for c in cells if "`--epoch` sets" in c and said in c]
    from isstreamer_jupyter._magics import IsStreamMagics  # (and %isstream? says the same)

    helped = " ".join(IsStreamMagics.isstream.__doc__.split())
    assert ("--epoch T the time of the logged events: seconds, milliseconds, microseconds or "
            "nanoseconds since 1970 (told apart by size), or ISO 8601") in helped
    # (the magic hands its text to coerce_epoch: each unit by its size; ISO 8601 with a zone or
    # without one, then local time)
    for given in ("1795852800", "1795852800000", "1795852800000000", "1795852800000000000",
                  "2026-11-28T08:00:00Z", "2026-11-28T09:00:00+01:00"):
        assert coerce_epoch("k", given) == 1795852800.0, given
    local = dt.datetime(2026, 11, 28, 8).timestamp()
    assert coerce_epoch("k", "2026-11-28T08:00:00") == local


MIGRATION_REFUSALS = [  # (what the manual's migration page names, the keyword arguments)
    ("`debug_level` (`DebugLevel`) outside 0 to 3", {"debug_level": 4}),
    ("`debug_level` (`DebugLevel`) outside 0 to 3", {"debug_level": -1}),
    ("`buffer_size` (`BufferSize`) below 1", {"buffer_size": 0}),
    ("an access key that is not a string (bytes, a number)", {"access_key": b"bytes-key"}),
    ("a bucket name of blank space only", {"bucket_name": "  "}),
    ("a bucket key with a space", {"bucket_key": "has space"}),
    ("or a bucket name or key over 250 characters", {"bucket_name": "x" * 251}),
]


@pytest.mark.parametrize(("said", "kwargs"), MIGRATION_REFUSALS)
def test_migration_lists_what_isstreamer_took_and_this_refuses(tmp_path, monkeypatch, said,
                                                               kwargs):
    """'Change the import; nothing else' left out that these raise ConfigError here."""
    from ISStreamer.Streamer import Streamer as Original

    from isstreamer_jupyter import ConfigError, Streamer

    migration = " ".join(page("migrating").split())  # (lines joined)
    assert said in migration
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    original = Original(**{"bucket_name": "B", **kwargs}, offline=True)  # (offline: no network)
    original.close()
    with pytest.raises(ConfigError, match=r"Fix|fix|use|shorten"):
        Streamer(**{"bucket_name": "B", **kwargs}, offline=True, spool=False)


def test_migration_s_other_refusals_are_refused(tmp_path, monkeypatch):
    from isstreamer_jupyter import ConfigError, Streamer

    monkeypatch.chdir(tmp_path)
    for name in ("IS_ACCESS_KEY", "IS_API_ACCESS_KEY", "IS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    migration = " ".join(page("migrating").split())  # (lines joined)
    assert "`offline=False` with no access key" in migration
    with pytest.raises(ConfigError):
        Streamer(bucket_name="B", offline=False, spool=False)
    assert "or with a line break" in migration
    with pytest.raises(ConfigError):
        Streamer(bucket_name="B", access_key="pasted\nkey", spool=False)
    assert "assigning `AccessKey` an empty key or on a streamer recording offline" in migration
    with Streamer(bucket_name="B", offline=True, spool=False) as streamer:
        with pytest.raises(ConfigError):
            streamer.AccessKey = "a-key"
        for attr, value in (("DebugLevel", 4), ("BufferSize", 0)):
            with pytest.raises(ConfigError):
                setattr(streamer, attr, value)


def test_readme_says_which_file_offline_recording_appends_to():
    """It said offline recording appends to `offline_file` "as named"; `.csv` is added to a
    name that does not end in `.csv` (rec.txt writes rec.txt.csv), in the settings table too."""
    from isstreamer_jupyter._config import BY_NAME
    from isstreamer_jupyter._transport import offline_path

    assert not [name for name, text in TEXTS.items() if "as named" in text]
    examples = [found for text in TEXTS.values()
                for found in re.findall(r"`(?:IS_OFFLINE_FILE=)?([\w.]+)` writes `([\w.]+)`",
                                        " ".join(text.split()))]  # (lines joined)
    assert len(examples) >= 2, examples
    for given, written in examples:
        assert str(offline_path(given)) == written
    assert ".csv is added" in BY_NAME["offline_file"].meaning


def test_the_notebook_table_claims_no_interruption_a_notebook_does_not_show():
    """It said offline-and-upload.ipynb shows "resuming an interrupted upload"; the notebook
    runs a finished upload again. A row that speaks of an interruption needs a notebook whose
    code interrupts something."""
    import json

    rows = re.findall(r"^\| \[([\w.-]+\.ipynb)\]\(([^)]+)\) \| (.*) \|$", README, re.M)
    assert len(rows) >= 5, rows
    for name, path, shows in rows:
        cells = json.loads((ROOT / path).read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if "interrupt" in shows.lower():
            assert "interrupt" in code.lower(), f"{name}: {shows}"
