"""The README says what the code does: its settings table and its quickstart are tested."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_api_table_gives_each_method_s_parameters_and_defaults():
    """Each `name(params)` row of the README's API table says what the method takes, but
    keyword-only options for the package's own callers (flush's `warn`) and set_bucket's
    `retries` (accepted only for ISStreamer's sake), left out on purpose."""
    import ast
    import inspect

    from isstreamer_jupyter import Streamer

    table = README[README.index("## The API"):README.index("### How delivery works")]
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


def test_a_date_written_beside_an_epoch_is_that_epoch_s():
    """offline-and-upload.ipynb said 1795000000 was 08:26:40 UTC; it is 11:06:40."""
    import datetime as dt

    root = Path(__file__).parent.parent
    texts = [README] + [p.read_text() for p in sorted((root / "notebooks").glob("*.ipynb"))]
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

    root = Path(__file__).parent.parent
    cells = ["".join(cell["source"]) for p in sorted((root / "notebooks").glob("*.ipynb"))
             for cell in json.loads(p.read_text())["cells"] if cell["cell_type"] == "code"]
    typed = re.compile(r"""AccessKey\s*=\s*[rbf]?["']""")
    assert not [text for text in [README, *cells] if typed.search(text)]
    assert 'streamer.AccessKey = os.environ["IS_ACCESS_KEY"]' in README


def test_a_notebook_that_sets_a_key_in_a_cell_says_it_is_a_demo_key():
    """panel.ipynb said the key is "never typed into a cell" while its setup cell sets
    IS_ACCESS_KEY (a made-up key for the loopback receiver): its text says what that key is."""
    import json

    for path in sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        text = " ".join(" ".join("".join(c["source"]) for c in cells
                                 if c["cell_type"] == "markdown").split())
        if 'os.environ["IS_ACCESS_KEY"] =' in code and "never typed into a cell" in code + text:
            assert "demo key" in text, path.name


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    return README[start:README.index("\n## ", start + 1)]


def test_every_upload_option_is_in_the_readme(capsys):
    """`--batch-size` was in `upload --help` but not in the README."""
    from isstreamer_jupyter.__main__ import main

    with pytest.raises(SystemExit):
        main(["upload", "--help"])
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", capsys.readouterr().out)) - {"--help"}
    assert "--batch-size" in options
    upload = _section("Offline, and uploading later")
    assert [o for o in sorted(options) if f"[{o}" not in upload or f"`{o}" not in upload] == []


def test_pointing_at_the_receiver_turns_the_pacing_off(capsys):
    """Pointed at the receiver as the README said, 300 rows took 10 s: the default pace is
    Initial State's."""
    from isstreamer_jupyter.__main__ import main

    told = [p for p in README.split("\n\n") if "IS_API_BASE=http://127.0.0.1" in p]
    assert told
    assert all("IS_MAX_RPS=0" in p for p in told), told
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "IS_MAX_RPS=0" in capsys.readouterr().out


def test_the_epoch_forms_the_docs_give_are_what_epoch_takes():
    """magics.ipynb and the README's magics table each gave another list of --epoch's units."""
    import datetime as dt
    import json

    from isstreamer_jupyter._events import coerce_epoch

    said = ("seconds, milliseconds, microseconds or nanoseconds since 1970 (told apart by size), "
            "or an ISO 8601 time (`2026-11-28T08:00:00Z`; with no zone, local time)")
    row = re.search(r"^\| `--epoch T` \|(.*)$", README, re.M).group(1)
    notebook = Path(__file__).parent.parent / "notebooks" / "magics.ipynb"
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


MIGRATION_REFUSALS = [  # (what the README's Migration section names, the keyword arguments)
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

    migration = " ".join(_section("Migrating from ISStreamer").split())  # (lines joined)
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
    migration = " ".join(_section("Migrating from ISStreamer").split())  # (lines joined)
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

    assert "as named" not in README
    examples = re.findall(r"`(?:IS_OFFLINE_FILE=)?([\w.]+)` writes `([\w.]+)`", README)
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
        cells = json.loads((Path(__file__).parent.parent / path).read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if "interrupt" in shows.lower():
            assert "interrupt" in code.lower(), f"{name}: {shows}"
