"""The ``%isstream`` line magic and ``%%isstream`` cell magic.

    %load_ext isstreamer_jupyter
    %isstream temp 32
    %isstream temp=32 humidity=0.41 status="warming up"
    %isstream --bucket "Run 7"

    %%isstream loss accuracy --prefix train_
    loss, accuracy = train_one_epoch()

All forms talk to one *session streamer* per shell, held by the magics'
:class:`~isstreamer_jupyter._magics.session.Session`: made on first use from the core's
settings (keyword > environment > ini > default, where the keywords are the
``%config IsStreamMagics.<setting>`` values that were set), or the user's own, adopted with
``%isstream --use NAME``. The access key never appears here. There is no trait for it, and
``%config IsStreamMagics.access_key = ...`` is refused, naming where the key goes. It comes
from the environment, an ini file or the adopted streamer.

User mistakes are one :class:`~IPython.core.error.UsageError` line, which IPython prints
without a traceback, built from the core's own messages, which name the limit and the fix.
"""

from __future__ import annotations

import ast
import math
import time
import types
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import (
    Magics,
    cell_magic,
    line_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
    output_can_be_silenced,
)
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, TraitError, Unicode, observe, validate
from traitlets.config import Configurable

from .. import _config
from .._errors import IsStreamerError
from .._events import VALUE_MAX
from .._stats import status_text
from .._streamer import Streamer
from . import parse
from .session import Session, SessionError

__all__ = ["CELL_SECONDS", "NOTE", "SETTING_TRAITS", "IsStreamMagics", "load", "unload"]

#: the settings ``%config IsStreamMagics.<name>`` sets: every one of the settings table but
#: the access key, on purpose: a trait's value can be shown, and a cell is no place for it
SETTING_TRAITS = tuple(s.name for s in _config.SETTINGS if not s.secret)
#: the answer to ``%config IsStreamMagics.access_key = ...``; the value is never shown
ACCESS_KEY_REFUSED = (f"IsStreamMagics.access_key is not a setting: the access key is never "
                      f"taken from a cell (a notebook and its history keep what a cell says). "
                      f"Set IS_ACCESS_KEY in the environment, or access_key under "
                      f"[{_config.CLIENT}] in isstreamer.ini; and remove it from that cell")
#: the key ``--time`` logs the cell's duration under, after ``--prefix``, in seconds
CELL_SECONDS = "cell_seconds"
NOTE = "isstream:"


def _setting_trait(name: str) -> Any:
    """A ``%config`` trait for one core setting; type and help come from ``_config.SETTINGS``.

    Its default is None, meaning "not set here": the streamer then takes the environment, the
    ini files or the core's default, exactly as ``Streamer()`` would.
    """
    setting = _config.BY_NAME[name]
    kind = bool if setting.default is None else type(setting.default)  # offline: None = auto
    trait = {bool: Bool, int: Int, float: Float, str: Unicode}[kind]
    options = dict.fromkeys(f"ini {option}" for _, option in setting.ini)
    sources = " or ".join(setting.env + tuple(options))
    help_text = f"{setting.meaning}. Unset (None): {sources}, else {setting.default_text}."
    return trait(None, allow_none=True, help=help_text).tag(config=True)


#: the base of IsStreamMagics that holds its traits, one for each of SETTING_TRAITS
_SettingTraits = types.new_class(
    "IsStreamSettings", (Configurable,),
    exec_body=lambda body: body.update({name: _setting_trait(name) for name in SETTING_TRAITS}))


def _print_help(parser: Any) -> None:
    """The magic's help: the text ``%isstream?`` shows, its usage then its docstring."""
    print(parser.format_help().rstrip("\n"))


@magics_class
class IsStreamMagics(Magics, _SettingTraits):
    """``%isstream`` and ``%%isstream``; ``%config IsStreamMagics.<setting> = value`` for each
    setting of the settings table but the access key. The traits come from the table."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        #: the owner of the session streamer
        self.session = Session(self._streamer_settings)
        #: by setting, the option that set it last, as "%isstream --offline"; the others were
        #: set with %config or the IPython config, and are named so
        self._set_by: dict[str, str] = {}
        # An access key in the shell's config comes from an IPython config file, or was
        # merged there by a %config refused before this load. It is dropped, never used, and
        # said with the first %isstream's output: a kernel that loads the extension at its
        # start shows what is printed now nowhere.
        self._config_note = ""
        for config in (getattr(shell, "config", None), kwargs.get("config")):
            if config is not None and self._drop_access_key(config):
                said = ACCESS_KEY_REFUSED.replace("from that cell", "from there")
                self._config_note = f"{NOTE} {said}"
        super().__init__(shell=shell, **kwargs)  # Magics: parent=shell, joins configurables

    # ------------------------------------------------------------------ the access key
    def _say_config_note(self) -> None:
        """Say, once, that an access key in the IPython config was dropped."""
        if self._config_note:
            print(self._config_note)
            self._config_note = ""

    def update_config(self, config: Any) -> None:
        """``%config``: an access key is refused and dropped; whatever else `config` sets
        applies.

        The refusal is a TraitError, which %config shows as an error line. The key is also
        dropped from the configs of the configurables %config updated before this one, which
        merged it into theirs.
        """
        if not self._drop_access_key(config):
            self._update_config(config)
            return
        for configurable in getattr(self.shell, "configurables", ()):
            self._drop_access_key(configurable.config)
        self._update_config(config)
        raise TraitError(ACCESS_KEY_REFUSED)

    def _update_config(self, config: Any) -> None:
        """Apply `config`; a value of the wrong type is told in the core's words, with the fix.
        traitlets' own says "expected a float, not the str 'abc'"."""
        try:
            super().update_config(config)
        except TraitError as exc:
            for section in self.section_names():
                for name, value in dict(config.get(section, {})).items():
                    if name in SETTING_TRAITS and isinstance(value, str) and not isinstance(
                            self.traits()[name], Unicode):
                        try:
                            parsed = _config.BY_NAME[name].parse(value)
                        except ValueError as words:
                            raise TraitError(f"IsStreamMagics.{name} = {value!r}: {words}"
                                             ) from None
                        code = (repr(parsed) if parsed == parsed and abs(parsed) != math.inf
                                else f"float({str(parsed)!r})")  # inf is no Python name
                        raise TraitError(
                            f"IsStreamMagics.{name} = {value!r}: expected {code}, not text: "
                            f"write it without quotes, %config IsStreamMagics.{name} = "
                            f"{code}") from None
            raise exc

    @classmethod
    def _drop_access_key(cls, config: Any) -> bool:
        """Remove an access key meant for this class from a traitlets Config; True if found."""
        found = False
        for section in cls.section_names():  # IsStreamMagics and the classes it derives from
            if f"{section}.access_key" in config:
                del config[section]["access_key"]
                found = True
        return found

    # ------------------------------------------------------------------ settings
    @validate(*SETTING_TRAITS)
    def _check_setting(self, proposal: Any) -> Any:
        """Check a %config value with the core's own rules, and normalise it as they do."""
        value, name = proposal["value"], proposal["trait"].name
        if value is None or isinstance(value, bool):
            return value
        try:
            if name == "bucket_name":  # as given: a blank one is refused, not stripped to ""
                _config.check_bucket_name(str(value))
            parsed = _config.BY_NAME[name].parse(str(value))
            if name == "bucket_key" and parsed:
                _config.check_bucket_key(parsed)
        except (ValueError, IsStreamerError) as exc:
            raise TraitError(f"IsStreamMagics.{name} = {value!r}: {exc}") from None
        return parsed

    @observe(*SETTING_TRAITS)
    def _setting_changed(self, change: Any) -> None:
        name, new = change["name"], change["new"]
        self._set_by.pop(name, None)  # %config; an option names itself after setting it
        if new is None:
            return
        if name in ("bucket_name", "bucket_key"):
            self.session.apply_bucket(self.bucket_name, self.bucket_key)
            return
        said = self.session.apply(name, new)
        if said:
            print(f"{NOTE} {said}")

    def _streamer_settings(self) -> dict[str, Any]:
        """The keyword arguments of the streamers the magics make, and what set each."""
        given_as = {name: self._set_by.get(name, f"%config IsStreamMagics.{name}")
                    for name in SETTING_TRAITS}
        return {**{name: getattr(self, name) for name in SETTING_TRAITS}, "given_as": given_as}

    # ------------------------------------------------------------------ the session streamer
    @property
    def streamer(self) -> Streamer:
        """The session streamer, made on first use."""
        try:
            return self.session.streamer
        except (SessionError, IsStreamerError) as exc:
            raise UsageError(str(exc)) from None

    def shutdown(self) -> None:
        """For unload: close the magics' own streamer, bounded, and stop the panels."""
        said = self.session.shutdown()
        if said:
            print(f"{NOTE} {said}")

    def _log(self, events: list[tuple[str, Any]], epoch: float | None = None) -> None:
        """Log checked events. The core's own notices, as recording offline or a long key,
        stay Python warnings, shown where the user logged, as for ``Streamer.log``."""
        log = self.streamer.log
        try:
            for key, value in events:
                log(key, value, epoch)
        except IsStreamerError as exc:  # StreamerClosed, or a refusal at debug_level >= 2
            raise UsageError(self.session.redact(str(exc))) from None

    # ------------------------------------------------------------------ %isstream
    @magic_arguments()
    @argument("items", nargs="*", metavar="KEY VALUE | KEY=VALUE ...",
              help="what to log: one `KEY VALUE`, or any number of `KEY=VALUE`. A value is a "
                   "Python literal if it parses as one, else an expression evaluated in your "
                   "namespace, else the bare text. {expr} and $var are expanded first.")
    @argument("--bucket", metavar="NAME",
              help="switch the session to bucket NAME (created if needed; its key is derived "
                   "from the name unless --bucket-key is given)")
    @argument("--bucket-key", metavar="KEY", help="the key of the --bucket bucket")
    @argument("--epoch", metavar="T",
              help="the time of the logged events: seconds, milliseconds, microseconds or "
                   "nanoseconds since 1970 (told apart by size), or ISO 8601")
    @argument("--flush", action="store_true",
              help="wait until everything logged so far is delivered")
    @argument("--timeout", type=float, metavar="S",
              help="the wait of --flush or --close, in seconds in all (default: while "
                   "delivery progresses, up to flush_timeout without an acknowledgment)")
    @argument("--status", action="store_true", help="print a compact text status")
    @argument("--panel", action="store_true",
              help="show the live panel (a text status where widgets cannot show)")
    @argument("--debug", type=int, metavar="N",
              help="debug level: 0 quiet, 1 echo events, 2 raise failures, 3 HTTP detail")
    @argument("--offline", action="store_true",
              help="record to the local CSV file from now on instead of sending")
    @argument("--close", action="store_true",
              help="flush (bounded by --timeout) and close the session streamer; the next use "
                   "starts a new one")
    @argument("--use", metavar="NAME",
              help="make your Streamer NAME the session streamer (it stays yours: unloading "
                   "the extension does not close it)")
    @line_magic
    @no_var_expand  # expanded below, only when the line has something to expand
    @needs_local_scope
    def isstream(self, line: str = "", local_ns: dict[str, Any] | None = None) -> None:
        """Stream values to Initial State from one line.

        ``%isstream temp 32`` logs one value; ``%isstream temp=32 status="warming up"`` logs
        several at one time. Each value is read, in this order, as a Python literal (``32``,
        ``"32"``, ``True``), else as an expression evaluated in your namespace (``x``,
        ``np.mean(a)``), else as the bare text (``warming``); IPython's ``{expr}`` and
        ``$var`` are expanded first. Values the core would refuse (lists, NaN, text over 2000
        characters...) are a UsageError that says what to do, and nothing on that line is
        logged. With no arguments, shows the session streamer's panel (a text status where
        widgets cannot show). Options combine: ``--bucket`` applies before the values are
        logged, ``--flush``/``--close`` and ``--status`` after. ``--help`` (or ``-h`` alone)
        prints this help and does nothing else.
        """
        self._say_config_note()
        if "$" in line or "{" in line or "}" in line:
            line = parse.expand(line, self.shell.user_ns, local_ns)
        words = parse.split_line(line)
        if not words:
            self._show_panel()
            return
        if all(word[0] != "-" for word in words):  # the common case: values, no options
            events = parse.read(words, self.shell.user_ns, local_ns)
            self._log(events, time.time() if len(events) > 1 else None)  # one line, one time
            return
        if parse.asks_help(words):
            _print_help(self.isstream.parser)
            return
        args = parse.parse_args(self.isstream.parser, words, "%isstream")
        parse.check_line_options(args)
        events = parse.read(args.items, self.shell.user_ns, local_ns)
        epoch = time.time() if len(events) > 1 else None  # one line, one time
        if args.epoch is not None:
            epoch = parse.epoch(events, args.epoch)
        if args.use is not None:
            self._use(parse.unquote(args.use), local_ns)
        if args.debug is not None:
            self._set_trait("debug_level", args.debug, "--debug")
        if args.offline:
            self._set_trait("offline", True, "--offline")
        if args.bucket is not None:
            self._switch_bucket(args.bucket, args.bucket_key, "%isstream")
        if events:
            self._log(events, epoch)
        if args.close:
            print(f"{NOTE} {self.session.close_by_user(args.timeout)}")
        elif args.flush:
            self._flush(args.timeout)
        if args.status:
            print(status_text(self.streamer.stats()))
        if args.panel:
            self._show_panel()

    def _set_trait(self, name: str, value: Any, option: str) -> None:
        """Set a setting from an %isstream option, which is then its source."""
        try:
            setattr(self, name, value)
        except TraitError as exc:
            raise UsageError(f"{option} {value!r}: {str(exc).rsplit(': ', 1)[-1]}") from None
        except IsStreamerError as exc:
            raise UsageError(str(exc)) from None
        self._set_by[name] = f"%isstream {option}"

    def _switch_bucket(self, name: str, key: str | None, magic: str) -> None:
        """--bucket: the bucket settings, as %config would set them, so a streamer the magics
        make later, after --offline or a changed setting, keeps streaming to it."""
        name, key = parse.unquote(name), parse.unquote(key) if key else ""
        try:
            with self.hold_trait_notifications():  # one switch, to the final name and key
                self.bucket_key = key or None
                self.bucket_name = name
            self._set_by.update(bucket_name=f"{magic} --bucket",
                                bucket_key=f"{magic} --bucket-key")
            # also when the settings already said so
            self.session.apply_bucket(self.bucket_name, self.bucket_key)
        except TraitError as exc:
            raise UsageError(str(exc).split(": ", 1)[-1]) from None  # the core's words
        except IsStreamerError as exc:
            raise UsageError(str(exc)) from None
        stats = self.streamer.stats()
        print(f"{NOTE} streaming to bucket {stats.bucket_name!r} (key {stats.bucket_key})")

    def _use(self, name: str, local_ns: dict[str, Any] | None) -> None:
        try:
            said = self.session.adopt(name, {**self.shell.user_ns, **(local_ns or {})})
        except SessionError as exc:
            raise UsageError(str(exc)) from None
        if said:
            print(f"{NOTE} {said}")

    def _flush(self, timeout: float | None) -> None:
        self.streamer  # noqa: B018 - made here: a settings mistake is a UsageError
        try:
            said = self.session.flush(timeout)
        except IsStreamerError as exc:  # debug_level >= 2
            raise UsageError(self.session.redact(str(exc))) from None
        print(f"{NOTE} {said}")

    def _show_panel(self) -> None:
        from .._panel import show

        show(self.streamer)

    # ------------------------------------------------------------------ %%isstream
    @magic_arguments("%isstream")
    @argument("names", nargs="*", metavar="NAME",
              help="variables to log after the cell ran; none: every name (but _private "
                   "ones) the cell's top-level assignments bound whose value is a number, bool "
                   "or short string")
    @argument("--prefix", default="", metavar="P", help="put P before every key")
    @argument("--bucket", metavar="NAME", help="switch the session to bucket NAME first")
    @argument("--bucket-key", metavar="KEY", help="the key of the --bucket bucket")
    @argument("--time", action="store_true",
              help=f"also log the cell's run time in seconds as <prefix>{CELL_SECONDS}")
    @argument("--lines", action="store_true",
              help="do not run the body: read it as data, one `KEY VALUE` (or KEY=VALUE ...) "
                   "per line; blank lines and # comments are skipped")
    @cell_magic("isstream")
    @output_can_be_silenced  # a last expression ending in ";" is not displayed, as usual
    def isstream_cell(self, line: str, cell: str) -> Any:
        """Run the cell as a normal cell, then stream its results.

        The cell runs in your namespace; its last expression is displayed; an exception
        propagates and nothing is logged. Then the named variables are logged, each as
        ``<prefix><name>`` (a missing or refused one is a UsageError, after the others are
        logged); with no names, every name (but ``_private`` ones) the cell's top-level
        assignments bound whose value is a number (numpy scalars too), a bool or a string up
        to 2000 characters, and one note line lists the names skipped. All events of one
        cell share one time.

        ``--lines`` does not run the body: each line is ``KEY VALUE`` (or ``KEY=VALUE ...``),
        values read as ``%isstream`` reads them; bad lines are reported by number in one
        UsageError after the good ones are logged.

        ``--help`` (or ``-h`` alone) prints this help and does nothing else: the body is not
        run.
        """
        __tracebackhide__ = True  # IPython shows the cell's frames, not ours
        self._say_config_note()
        words = parse.split_line(line)
        if parse.asks_help(words):  # the body is not run, as no option then applies
            _print_help(self.isstream_cell.parser)
            return None
        args = parse.parse_args(self.isstream_cell.parser, words, "%%isstream")
        prefix = parse.check_cell_options(args)
        if args.bucket is not None:
            self._switch_bucket(args.bucket, args.bucket_key, "%%isstream")
        else:
            self.streamer  # noqa: B018 - make it now: a settings mistake shows before the cell
        if args.lines:
            self._log_lines(cell, prefix)
            return None
        value, names, seconds = self._run_cell(cell, args.names)
        epoch = time.time()
        namespace = self.shell.user_ns
        if args.names:
            events, problems = parse.pick_named(args.names, prefix, namespace)
        else:
            events, skipped = parse.pick_assigned(names, prefix, namespace)
            problems = []
            if skipped:
                print(f"{NOTE} not logged (not a number, bool or string up to "
                      f"{VALUE_MAX} characters; name them to be told why): "
                      f"{', '.join(skipped)}")
        if args.time:
            events.append((prefix + CELL_SECONDS, seconds))
        self._log(events, epoch)
        if problems:
            logged = f" (logged: {', '.join(k for k, _ in events)})" if events else ""
            raise UsageError("; ".join(problems) + logged)
        return value

    def _run_cell(self, cell: str, names: list[str]) -> tuple[Any, list[str], float]:
        """Run the cell in the user's namespace as IPython would, its %magics and !commands
        too; return its last expression's value, the names to log, and its run time."""
        __tracebackhide__ = True
        shell = self.shell
        source = shell.transform_cell(cell)
        filename = shell.compile.cache(source, shell.execution_count)
        tree = shell.compile.ast_parse(source, filename)
        if not names:
            names = parse.assigned_names(tree)
        tree = shell.transform_ast(tree)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        glob, local = shell.user_global_ns, shell.user_ns
        try:
            code = shell.compile(tree, filename, "exec")
        except SyntaxError as exc:
            if "await" not in str(exc.msg):
                raise
            raise UsageError("%%isstream cannot run a cell that uses top-level await: run it "
                             "as a normal cell, then %isstream NAME=VALUE ...") from None
        start = time.perf_counter()
        exec(code, glob, local)
        value = eval(shell.compile(last, filename, "eval"), glob, local) if last else None
        return value, names, time.perf_counter() - start

    def _log_lines(self, body: str, prefix: str) -> None:
        events, bad = parse.read_lines(body, self.shell.user_ns, prefix)
        if events:
            self._log(events, time.time())
        if bad:
            raise UsageError(parse.lines_problem(bad, len(events)))


# --------------------------------------------------------------------------- load / unload
def _registered(ipython: Any) -> IsStreamMagics | None:
    return ipython.magics_manager.registry.get(IsStreamMagics.__name__)


def load(ipython: Any) -> None:
    """Register the magics once per shell; loading again is a no-op."""
    if _registered(ipython) is None:
        ipython.register_magics(IsStreamMagics(ipython))


def unload(ipython: Any) -> None:
    """Close the session streamer if the magics made it, stop its panels, unregister the
    magics. ``%config`` values are kept in the shell's config for a later load."""
    magics = _registered(ipython)
    if magics is None:
        return
    magics.shutdown()
    manager = ipython.magics_manager
    del manager.registry[IsStreamMagics.__name__]
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        if getattr(table.get("isstream"), "__self__", None) is magics:
            del table["isstream"]
    while magics in ipython.configurables:
        ipython.configurables.remove(magics)
    for name in SETTING_TRAITS:
        value = getattr(magics, name)
        if value is not None:
            ipython.config.IsStreamMagics[name] = value
