"""Settings: one table, resolved as keyword arguments > environment > ./isstreamer.ini >
~/isstreamer.ini > defaults.

The table :data:`SETTINGS` is the single description of every setting; the manual's settings
table, the magics' ``%config`` traits and the error messages are all derived from it.

A front end (the command line, the magics) passes its user's values in as keyword arguments,
and names them with ``given_as`` (setting -> what its user wrote: ``--batch-size``,
``%isstream --offline``), so that messages name that instead of "keyword argument".
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._errors import ConfigError, warn

DEFAULT_API_BASE = "https://groker.init.st/api"
DEFAULT_BUCKET_NAME = "isstreamer_jupyter"
#: the file offline recording appends to, unless offline_file names another
DEFAULT_OFFLINE = "isstreamer_out.csv"
INI_NAME = "isstreamer.ini"
CLIENT = "isstreamer.client_config"
API = "isstreamer.api_config"
#: the source of a keyword argument no front end named (the Python API's)
KEYWORD = "keyword argument"

#: what is shown in place of the access key
MASK = "********"

def redacted(text: str, secret: str) -> str:
    """`text` with `secret` masked wherever it is (not a toy secret of under 6 characters,
    such as "k": masking that would mangle every word)."""
    return text.replace(secret, MASK) if len(secret) >= 6 and secret in text else text


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true or false (also yes/no, on/off, 1/0; any case)")


def _parse_number(kind: type, minimum: float, strict: bool, maximum: float = math.inf, *,
                  inf_means: str = "", finite_because: str = "") -> Callable[[str], Any]:
    """A parser of numbers from `minimum` (excluded if `strict`) to `maximum`. Infinity
    (``inf``) is taken if `inf_means` says what it means, else refused, saying
    `finite_because`; NaN never."""
    noun = "a whole number" if kind is int else "a number"
    low, high = (f"{bound:,}" if kind is int and bound < math.inf else f"{bound:g}"
                 for bound in (minimum, maximum))  # (1,000,000 bytes, not 1e+06)
    if maximum < math.inf and not strict:
        allowed = f"{noun} from {low} to {high}"
    else:
        allowed = f"{noun} {'above' if strict else 'at least'} {low}"
        if maximum < math.inf:
            allowed += f" and at most {high}"
    if inf_means:
        allowed += f", or inf ({inf_means})"

    def parse(raw: str) -> Any:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(f"expected {noun}") from None
        if value != value:
            raise ValueError(f"expected {allowed}, not NaN")
        if value == math.inf and inf_means:
            return value
        if value == math.inf and finite_because:
            raise ValueError(f"expected {allowed}, not inf: {finite_because}")
        if value < minimum or (strict and value == minimum) or value > maximum:
            raise ValueError(f"expected {allowed}")
        return value

    return parse


class Secret(str):
    """The access key, held from the moment it comes in (a keyword argument, the
    environment, an ini file, ``AccessKey = ...``) to the HTTP header.

    Used as text it is the key: ``str()`` and ``%s``, ``encode()`` (the header, the spool's
    fingerprint), comparisons, hashing. Shown as a value it is the mask: ``repr()``, and so
    what shows a variable's value (IPython's ``%xmode Verbose`` tracebacks, which show the
    values in each frame's line; a cell's result; container and dataclass reprs; pprint;
    logging's ``%r``), and ``format()`` (an f-string). Text made from it (a slice, ``+``,
    ``strip()``) is a plain ``str`` again: wrap what is kept, with :func:`hidden`. It is not
    pickled: a pickle would hold the key in clear."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK if self else "")

    def __format__(self, spec: str) -> str:
        return format(MASK if self else "", spec)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("the access key is not pickled (it would be in the pickle in clear): "
                        "give it again from IS_ACCESS_KEY or isstreamer.ini")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: Any) -> Secret:
        return self


_T = TypeVar("_T")


def hidden(value: _T) -> _T:
    """`value` as a :class:`Secret` if it is text (a ``None``, or what is not text, as it is);
    rebind a parameter with it first thing (``access_key = hidden(access_key)``): a verbose
    traceback shows a frame's arguments as they are when it is shown."""
    return Secret(value) if isinstance(value, str) else value  # type: ignore[return-value]


def normalize_api_base(raw: str) -> str:
    """``https://host`` (ISStreamer's form) and ``https://host/api`` both mean ``.../api``.
    A URL no request could be made to (a space in it, no host, a broken [IPv6] address, a
    port past 65535) is refused here: it would otherwise be retried forever, or raise from
    inside requests."""
    base = raw.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base):
        raise ValueError("expected a URL starting with http:// or https://")
    if any(c.isspace() or not c.isprintable() for c in base):
        raise ValueError("expected a URL without spaces or control characters")
    try:
        parts = urlsplit(base)
    except ValueError:  # (an [IPv6] address unclosed, or not one)
        raise ValueError("expected a valid host: a name, an IPv4 address, or an IPv6 address "
                         "in brackets, such as http://[::1]:8080/api") from None
    if not parts.hostname:
        raise ValueError("expected a host after http:// or https://")
    try:
        port = parts.port  # (past 65535, or not a number, raises)
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("expected a port from 1 to 65535 after the host's ':'")
    if base.count("/") == 2:  # no path: ISStreamer's stream_api_base names the host only
        base += "/api"
    return base


@dataclass(frozen=True)
class Setting:
    """One setting: its keyword, where else it may come from, how it is read, its default."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    env: tuple[str, ...] = ()
    ini: tuple[tuple[str, str], ...] = ()
    doc: str = ""
    secret: bool = False
    shown: str = ""  # the default as the manual shows it, where repr() would not do
    aliases: tuple[str, ...] = ()  # other keyword names of it (ISStreamer's)

    @property
    def default_md(self) -> str:
        """The default as the manual's settings table tells it."""
        return self.shown or ("none" if self.default == "" else f"`{self.default}`")

    @property
    def default_text(self) -> str:
        """The default as messages and ``%config`` tell it."""
        return self.default_md.replace("`", "")

    @property
    def meaning(self) -> str:
        """What it does, with its other keyword names."""
        aliases = ", ".join(self.aliases)
        return f"{self.doc} (alias: {aliases})" if aliases else self.doc


def _str(raw: str) -> str:
    return raw.strip()


def _name(raw: str) -> str:
    """Stripped; but a name given as blank space is a mistake ("" means not given)."""
    name = raw.strip()
    if raw and not name:
        raise ValueError("expected a name, not blank space")
    return name


def _access_key(raw: str) -> Secret:
    """Stripped, as every text setting; and fit for an HTTP header (never shown: it is
    secret). A line break pasted inside, or a character a header cannot carry, would make
    every request fail before it is sent."""
    key = Secret(raw.strip())
    if not (key.isprintable() and key.isascii()):
        raise ValueError("expected printable ASCII characters only: look for a pasted line "
                         "break or a stray character")
    return key


_POS_INT = _parse_number(int, 1, strict=False)
#: the least spool_max_bytes: a few segments' worth (one is some 40 kB), or every event drops
SPOOL_MIN_BYTES = 1_000_000
#: the longest finite wait a duration setting takes (~31 years; the system's waits end at
#: about 9.2e9 s)
LONGEST = 1e9

SETTINGS: tuple[Setting, ...] = (
    Setting("access_key", _access_key, "", ("IS_ACCESS_KEY", "IS_API_ACCESS_KEY"),
            ((CLIENT, "access_key"),), "Initial State access key; none means record locally",
            secret=True),
    Setting("bucket_name", _name, "", ("IS_BUCKET_NAME",), ((CLIENT, "default_bucket"),),
            "bucket name", shown=repr(DEFAULT_BUCKET_NAME)),
    Setting("bucket_key", _str, "", ("IS_BUCKET_KEY",), ((CLIENT, "bucket_key"),),
            "bucket key; one name always means one bucket", shown="derived from the name"),
    Setting("api_base", normalize_api_base, DEFAULT_API_BASE, ("IS_API_BASE", "IS_API_HOST"),
            ((API, "stream_api_base"), (CLIENT, "stream_api_base")), "events API base URL"),
    Setting("debug_level", _parse_number(int, 0, strict=False, maximum=3), 0, ("IS_DEBUG_LEVEL",),
            ((CLIENT, "debug_level"),),
            "0 quiet; 1 echo each event; 2 raise refusals and delivery failures; 3 HTTP detail"),
    Setting("batch_size", _POS_INT, 10, ("IS_BATCH_SIZE",), ((CLIENT, "batch_size"),),
            "events per request at most", aliases=("buffer_size",)),
    Setting("flush_interval", _parse_number(
                float, 0, strict=True, maximum=LONGEST,
                finite_because="events would wait forever for a fuller batch"), 1.0,
            ("IS_FLUSH_INTERVAL",),
            ((CLIENT, "flush_interval"),), "seconds an event waits for a fuller batch, at most"),
    Setting("max_requests_per_second", _parse_number(
                float, 0, strict=False, finite_because="for no pacing give 0"), 3.0,
            ("IS_MAX_RPS",),
            ((CLIENT, "max_requests_per_second"),),
            "request pace; 0 means no pacing (self-hosted or test endpoints)"),
    Setting("max_queue", _POS_INT, 100_000, ("IS_MAX_QUEUE",), ((CLIENT, "max_queue"),),
            "events held in memory before they spill to the spool (without one, the oldest drop)"),
    Setting("timeout", _parse_number(
                float, 0, strict=True, maximum=LONGEST,
                finite_because="a request to a silent service would never end"), 10.0,
            ("IS_TIMEOUT",), ((CLIENT, "timeout"),),
            "seconds one HTTP request may take"),
    Setting("flush_timeout", _parse_number(float, 0, strict=True, inf_means="until delivered"),
            10.0, ("IS_FLUSH_TIMEOUT",), ((CLIENT, "flush_timeout"),),
            "flush() and close() stop waiting after this many seconds with no event "
            "acknowledged (inf: until delivered)"),
    Setting("exit_timeout", _parse_number(
                float, 0, strict=False, maximum=LONGEST,
                finite_because=("the interpreter would not exit while the service is down "
                                "(what is left waits in the spool for `spool send`)")),
            3.0, ("IS_EXIT_TIMEOUT",),
            ((CLIENT, "exit_timeout"),),
            "the same at interpreter exit; the rest stays in the spool for `spool send`"),
    Setting("progress", parse_bool, None, ("IS_PROGRESS",), ((CLIENT, "progress"),),
            "show a progress bar on waits of over a second",
            shown="on in Jupyter or when stderr is a terminal"),
    Setting("offline", parse_bool, None, ("IS_OFFLINE",), ((CLIENT, "offline_mode"),),
            "record locally instead of sending", shown="on when there is no access key"),
    Setting("offline_file", _str, DEFAULT_OFFLINE, ("IS_OFFLINE_FILE",),
            ((CLIENT, "offline_file"),),
            "CSV file offline recording appends to (.csv is added to a name not ending in .csv)"),
    Setting("spool", parse_bool, True, ("IS_SPOOL",), ((CLIENT, "spool"),),
            "keep accepted events on disk until the service acknowledges them"),
    Setting("spool_dir", _str, "", ("IS_SPOOL_DIR",), ((CLIENT, "spool_dir"),),
            "folder of the spool database", shown="the user data folder"),
    Setting("spool_interval", _parse_number(
                float, 0, strict=True, maximum=LONGEST,
                finite_because="events would never reach the spool"), 0.2,
            ("IS_SPOOL_INTERVAL",),
            ((CLIENT, "spool_interval"),), "seconds before accepted events are on disk, at most"),
    Setting("spool_max_bytes", _parse_number(int, SPOOL_MIN_BYTES, strict=False),
            256 * 1024 * 1024, ("IS_SPOOL_MAX_BYTES",),
            ((CLIENT, "spool_max_bytes"),),
            "bound on one access key's waiting events in the spool (at least 1,000,000 "
            "bytes); past it, its oldest drop",
            shown="256 MiB"),
)
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
#: the keyword names that carry a secret: the secret settings' names and aliases, and
#: Streamer's client_key (the seed README's name for access_key)
SECRET_KEYWORDS = frozenset(
    {"client_key"}.union(*((s.name, *s.aliases) for s in SETTINGS if s.secret)))


def hide_secrets(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of keyword arguments, the secret ones :func:`hidden`."""
    return {name: hidden(value) if name in SECRET_KEYWORDS else value
            for name, value in kwargs.items()}


def settings_table() -> str:
    """The manual's settings table; the docs build renders it from this."""
    rows = [f"| keyword | environment | `isstreamer.ini`, in `[{CLIENT}]` | default | meaning |",
            "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        env = ", ".join(f"`{name}`" for name in s.env)
        ini = ", ".join(f"`{opt}`" if sec == CLIENT else f"`{opt}` in `[{sec}]`"
                        for sec, opt in s.ini)
        rows.append(f"| `{s.name}` | {env} | {ini} | {s.default_md} | {s.meaning} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one streamer. ``repr`` never shows the access key."""

    access_key: str = field(default="", repr=False)
    bucket_name: str = ""
    bucket_key: str = ""
    api_base: str = DEFAULT_API_BASE
    debug_level: int = 0
    batch_size: int = 10
    flush_interval: float = 1.0
    max_requests_per_second: float = 3.0
    max_queue: int = 100_000
    timeout: float = 10.0
    flush_timeout: float = 10.0
    exit_timeout: float = 3.0
    progress: bool | None = None
    offline: bool = False
    offline_file: str = DEFAULT_OFFLINE
    spool: bool = True
    spool_dir: str = ""
    spool_interval: float = 0.2
    spool_max_bytes: int = 256 * 1024 * 1024
    #: why offline is on, in plain words ("" when online)
    offline_reason: str = ""
    #: where each setting came from, for messages: name -> "environment variable IS_X", ...
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def ini_paths(ini_file_location: str | os.PathLike[str] | None) -> list[Path]:
    """The ini files to read, the first one winning: the working folder's before the home's."""
    if ini_file_location is not None:
        path = Path(ini_file_location).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"ini_file_location={str(path)!r} does not exist; give the path of an existing "
                f"{INI_NAME} or leave it out"
            )
        return [path]
    candidates = [Path.cwd() / INI_NAME, Path.home() / INI_NAME]
    seen: list[Path] = []
    for path in candidates:
        if path.is_file() and path.resolve() not in [p.resolve() for p in seen]:
            seen.append(path)
    return seen


def _ini_problem(exc: configparser.Error, text: str) -> str:
    """What is wrong, by line number: never the line's text (it may be the access key's).
    `text` (the file's) is only looked at: a [section] line lacking its ']' is not read as
    one, and configparser says it comes before any section, or is not 'name = value'."""
    lines = text.split("\n")  # (as configparser counts them)
    if isinstance(exc, configparser.MissingSectionHeaderError):
        unclosed = _unclosed_headers(lines, [exc.lineno])
    elif isinstance(exc, configparser.ParsingError):
        unclosed = _unclosed_headers(lines, [number for number, _ in exc.errors])
    else:
        unclosed = []
    if unclosed:
        numbers = ", ".join(str(number) for number in unclosed)
        return (f"line {numbers} is a [section] line without its closing ']': end "
                f"{'it' if len(unclosed) == 1 else 'them'} with ], as in [{CLIENT}]")
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return (f"line {exc.lineno} comes before any [section] line: put "
                f"[{CLIENT}] above it")
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(number) for number, _ in exc.errors)
        return (f"line {lines} is not 'name = value' (is the '=' missing?): fix or remove "
                f"{'it' if len(exc.errors) == 1 else 'them'}")
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: section [{exc.section}] is there twice: keep one"
    if isinstance(exc, configparser.DuplicateOptionError):
        return (f"line {exc.lineno}: {exc.option} is set twice in [{exc.section}]: keep one")
    return type(exc).__name__


def _unclosed_headers(lines: list[str], numbers: list[int]) -> list[int]:
    """Which of the lines `numbers` (from 1) open a [section] and never close it."""
    return [number for number in numbers if 0 < number <= len(lines)
            and lines[number - 1].strip().startswith("[") and "]" not in lines[number - 1]]


def _read_ini(paths: list[Path]) -> list[tuple[Path, configparser.ConfigParser]]:
    parsed = []
    for path in paths:
        parser = configparser.ConfigParser(interpolation=None)
        problem = ""  # (raised below, outside the handler: not even as the error's context
        try:  # may the file's text travel, and the access key may be in it)
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path} cannot be read ({exc.strerror or exc}): make it "
                              f"readable, or remove it") from None
        try:
            text = data.decode("utf-8")
            parser.read_string(text, source=str(path))
        except configparser.Error as exc:
            problem = f"is not a valid ini file: {_ini_problem(exc, text)}"
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            problem = f"is not UTF-8 text (line {line} has a byte that is not): save it as UTF-8"
        if problem:
            raise ConfigError(f"{path} {problem}")
        _check_sections(path, parser)
        parsed.append((path, parser))
    return parsed


#: sections meant for ours but not read (as ISStreamer did not read them), by their name in
#: lower case without an "isstreamer" prefix; and the name to give them
_MEANT = {"client_config": CLIENT, "api_config": API, "": CLIENT}
_told_sections: set[tuple[Path, str]] = set()


def _check_sections(path: Path, parser: configparser.ConfigParser) -> None:
    """Say once per file and section that a section which looks like ours is not read, and
    its right name (``[client_config]``, say, is silently ignored otherwise: a key in it
    would leave the user recording locally). Names only: no value is ever shown."""
    for section in parser.sections():
        meant = _MEANT.get(re.sub(r"^isstreamer[._ ]?", "", section.strip().lower()))
        told = (path.resolve(), section)
        if meant is None or section == meant or told in _told_sections:
            continue
        _told_sections.add(told)
        warn(f"{path}: section [{section}] is not read, so its settings are not used: rename "
             f"it to [{meant}] (ISStreamer's name)")


def given_source(name: str, given_as: Mapping[str, str] | None) -> str:
    """Where a value the caller gave for `name` came from, as messages say it: what its
    user wrote (`given_as[name]`: a front end's option), else "keyword argument"."""
    return (given_as or {}).get(name) or KEYWORD


def resolve(
    kwargs: Mapping[str, Any],
    *,
    given_as: Mapping[str, str] | None = None,
    ini_file_location: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting from its sources; a bad value raises :class:`ConfigError`.

    `given_as` names, by setting, what a front end's user wrote to give the value in
    `kwargs` (``{"batch_size": "--batch-size"}``): messages and ``Settings.sources`` say
    that instead of "keyword argument". A name for a setting not in `kwargs` is not used.

    The access key is a :class:`Secret` from where it is read on: its arguments are
    rebound first, as a traceback shows them.
    """
    kwargs = hide_secrets(kwargs)
    environ = _environment(os.environ if environ is None else environ)
    inis = _read_ini(ini_paths(ini_file_location))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given: set[str] = set()  # the settings the caller gave
    for setting in SETTINGS:
        raw, source, by_caller = _lookup(setting, kwargs, given_as, environ, inis)
        values[setting.name] = setting.default if source == "default" else _parsed(
            setting, raw, source, by_caller)
        sources[setting.name] = source
        if by_caller:
            given.add(setting.name)

    for name in ("bucket_name", "bucket_key"):  # (as set_bucket's, but naming the source)
        problem = _bucket_problem(name, values[name])
        if problem:
            raise _refused(BY_NAME[name], values[name], sources[name], problem, name in given)

    offline = values["offline"]
    reason = ""
    if offline is None:
        offline = not values["access_key"]
        if offline:
            reason = "no access key"
    elif offline:
        reason = f"offline mode is on ({sources['offline']})"
    elif not values["access_key"]:  # (ISStreamer sent with no key, and every request got 401)
        said = given_as.get("offline") if given_as and "offline" in given else None
        # (a %config already run cannot be left out: setting it to None undoes it)
        undo = f"set {said} = None" if said and said.startswith("%config") else (
            f"leave {said or 'offline'} out")
        raise ConfigError(
            f"offline = False ({sources['offline']}) but there is no access key, so nothing "
            f"could be sent. Fix: set IS_ACCESS_KEY (or access_key under [{CLIENT}] in "
            f"isstreamer.ini), or {undo} to record locally")
    values["offline"] = offline
    return Settings(**values, offline_reason=reason, sources=sources)


def _environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the settings read, and no others (a traceback may show this mapping, and
    ``os.environ``'s repr is the whole environment), the secret ones :func:`hidden`."""
    return {name: hidden(environ[name]) if setting.secret else environ[name]
            for setting in SETTINGS for name in setting.env if name in environ}


def _lookup(
    setting: Setting,
    kwargs: Mapping[str, Any],
    given_as: Mapping[str, str] | None,
    env: Mapping[str, str],
    inis: list[tuple[Path, configparser.ConfigParser]],
) -> tuple[Any, str, bool]:
    """(the raw value, where it came from, whether the caller gave it)."""
    given = [(name, kwargs[name]) for name in (setting.name, *setting.aliases)
             if kwargs.get(name) is not None and kwargs[name] != ""]  # ISStreamer: "" = not given
    if given:
        (name, value), *others = given
        if any(other != value for _, other in others):
            raise ConfigError(f"{' and '.join(n for n, _ in given)} are one setting: give "
                              f"only one")
        source = given_source(setting.name, given_as)
        if source == KEYWORD and name != setting.name:
            source += f" {name}"  # (an alias: buffer_size)
        return value, source, True
    for name in setting.env:
        if env.get(name, "") != "":
            return env[name], f"environment variable {name}", False
    for path, parser in inis:
        for section, option in setting.ini:
            if parser.has_option(section, option):
                raw = parser.get(section, option)
                return ((hidden(raw) if setting.secret else raw), f"{path} [{section}] {option}",
                        False)
    return setting.default, "default", False


def _parsed(setting: Setting, raw: Any, source: str, by_caller: bool) -> Any:
    """A value from `source`, checked; the caller's values arrive typed and are checked with
    the same rules as text."""
    if by_caller and setting.secret and not isinstance(raw, str):  # (str() of b"k" is "b'k'")
        raise _refused(setting, raw, source, f"expected a string, not {type(raw).__name__}",
                       by_caller)
    if by_caller and setting.parse is parse_bool and not isinstance(raw, str):
        if isinstance(raw, bool):
            return raw
        raise _refused(setting, raw, source, "expected True or False", by_caller)
    try:
        return setting.parse(str(raw))
    except ValueError as exc:
        raise _refused(setting, raw, source, str(exc), by_caller) from None


def unusable(settings: Settings, name: str, reason: str) -> ConfigError:
    """The error for a setting found unusable once put to use (the offline file's folder does
    not exist, say), as a bad value's: its value, where it came from, the fix there."""
    source = settings.sources.get(name, "default")
    by_caller = not (source == "default" or source.startswith("environment variable ")
                     or re.search(r" \[[^]]+\] \w+$", source))  # (an ini line)
    return _refused(BY_NAME[name], getattr(settings, name), source, reason, by_caller)


def offline_path(name: str | os.PathLike[str]) -> Path:
    """Where offline recording to `name` appends: `name`, with ``.csv`` added unless it ends
    so (ISStreamer added it always)."""
    path = Path(name)
    return path if path.suffix.lower() == ".csv" else path.with_name(path.name + ".csv")


def offline_file_problem(name: str) -> str:
    """Why offline recording cannot append to the file `name` names at all; "" if it may."""
    for path in dict.fromkeys((Path(name), offline_path(name))):
        if path.is_dir():
            return f"{path} is a folder; expected a file name, such as {path / DEFAULT_OFFLINE}"
    folder = offline_path(name).parent
    if not folder.is_dir():
        return f"the folder {folder} does not exist; expected a file in a folder that does"
    return ""


def _refused(setting: Setting, raw: Any, source: str, reason: str,
             by_caller: bool) -> ConfigError:
    """The error for a bad value: the setting, the value (never the access key's), where it
    came from, what is allowed, and how to fix it there."""
    shown = "(hidden)" if setting.secret else repr(raw)
    if len(shown) > 80:  # (a 300-character bucket name: its start says which)
        shown = f"{shown[:60]}… ({len(str(raw))} characters)"
    default = f"for the default ({setting.default_text})"
    if by_caller:
        fix = f"change it, or leave it out {default}"
    elif source == "default":
        fix = f"give {setting.name} another value ({' or '.join(setting.env)})"
    elif source.startswith("environment variable "):
        fix = f"change {source.rsplit(' ', 1)[-1]}, or unset it {default}"
    else:
        fix = f"change that line, or remove it {default}"
    where = "(the default)" if source == "default" else f"from {source}"
    return ConfigError(f"{setting.name} = {shown} {where}: {reason}. Fix: {fix}")


#: the service's limit on a bucket name's and a bucket key's length
BUCKET_MAX = 250
_BUCKET_KEY_OK = re.compile(r"[!#-&(-9;-~]+")  # printable ASCII but space : " '  (a header)


def _bucket_problem(name: str, value: str) -> str:
    """Why the service would refuse `value` as the setting `name` (bucket_name or
    bucket_key), as a setting's bad value is said; "" if it would not."""
    if len(value) > BUCKET_MAX:
        return f"expected at most {BUCKET_MAX} characters (the service's limit), not {len(value)}"
    if name == "bucket_key" and value and not _BUCKET_KEY_OK.fullmatch(value):
        return ("expected printable ASCII without spaces, :, \" or ' (letters, digits and "
                "underscores are safe)")
    return ""


def check_bucket(name: str, key: str) -> None:
    """Refuse a bucket name or key the service would refuse, or a blank name, saying how to
    fix it."""
    check_bucket_name(name)
    check_bucket_key(key)


def check_bucket_name(name: str) -> None:
    if len(name) > BUCKET_MAX:
        raise ConfigError(f"bucket name is {len(name)} characters; the limit is {BUCKET_MAX}: "
                          f"shorten it")
    if not name.strip():  # (the default name is for when none is given: this one was)
        raise ConfigError(f"bucket name {name!r} is blank: give the bucket a name, such as "
                          f"'Run 7'")


def check_bucket_key(key: str) -> None:
    if len(key) > BUCKET_MAX:
        raise ConfigError(f"bucket key is {len(key)} characters; the limit is {BUCKET_MAX}: "
                          f"shorten it")
    if not _BUCKET_KEY_OK.fullmatch(key):
        raise ConfigError(
            f"bucket key {key!r} cannot be used: it must be printable ASCII without spaces, "
            f": \" or '; use letters, digits and underscores"
        )


def derive_bucket_key(name: str) -> str:
    """A stable bucket key for a bucket name: the same name always means the same bucket."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")[:200] or "bucket"
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"{slug}_{digest}"
