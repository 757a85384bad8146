"""Reading what the magics are given: the ``%isstream`` line, the ``%%isstream`` options, the
``--lines`` body, and the values a cell left behind.

Every mistake is one :class:`~IPython.core.error.UsageError` line, built from the core's own
messages, which name the limit and the fix.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import inspect
import numbers
import re
import types
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError
from IPython.utils.text import DollarFormatter

from .._errors import IsStreamerError, counted
from .._events import VALUE_MAX, check_key, coerce_epoch, coerce_value

__all__ = [
    "asks_help",
    "assigned_names",
    "auto_loggable",
    "check_cell_options",
    "check_line_options",
    "checked",
    "epoch",
    "expand",
    "is_spaced",
    "lines_problem",
    "pairs",
    "parse_args",
    "parse_value",
    "pick_assigned",
    "pick_named",
    "read",
    "read_lines",
    "split_line",
    "unquote",
]

_PLAIN = re.compile(r"[^\"'()\[\]{}#]*\Z")  # nothing the careful splitter would treat apart
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")  # what literal_eval reads as an int, quickly
_PAIR = re.compile(r"""(?P<key>"[^"]*"|'[^']*'|[^\s=()\[\]{}"'<>!]+)=(?!=)(?P<value>.*)\Z""",
                   re.DOTALL)
_OPENERS, _CLOSERS = "([{", ")]}"
_MISSING = object()
_DOLLAR = DollarFormatter()


# --------------------------------------------------------------------------- the line
def split_line(line: str) -> list[str]:
    """Split at spaces that are outside quotes and brackets, keeping the quotes.

    ``status="warming up" x=f(a, b)`` is two words; a word that starts with ``#`` starts a
    comment. Quotes are kept so that ``"32"`` stays a string when the value is read.
    """
    if _PLAIN.match(line):
        return line.split()
    words: list[str] = []
    start: int | None = None
    quote = ""
    depth = 0
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch.isspace():
            if depth == 0 and start is not None:
                words.append(line[start:i])
                start = None
        else:
            if start is None:
                if ch == "#":
                    break
                start = i
            if ch in "\"'":
                quote = ch
            elif ch in _OPENERS:
                depth += 1
            elif ch in _CLOSERS:
                depth = max(0, depth - 1)
        i += 1
    if quote:
        raise UsageError(f"unclosed {quote} in {line.strip()!r}: close the quote")
    if depth:
        raise UsageError(f"unclosed bracket in {line.strip()!r}: close it")
    if start is not None:
        words.append(line[start:i])
    return words


def unquote(word: str) -> str:
    """An option's value or a key: ``"Run 7"`` -> ``Run 7``; unquoted words stay as they are."""
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'":
        try:
            value = ast.literal_eval(word)
        except (ValueError, SyntaxError):
            return word
        if isinstance(value, str):
            return value
    return word


def expand(line: str, user_ns: dict[str, Any], local_ns: dict[str, Any] | None) -> str:
    """IPython's ``$var`` and ``{expr}`` expansion, as ``run_line_magic`` does it.

    The magic expands the line itself because IPython's expansion of a line with nothing to
    expand costs more than all the rest of ``%isstream temp 32``.
    """
    namespace = user_ns.copy()
    if local_ns:
        namespace.update(local_ns)
    try:
        return _DOLLAR.vformat(line, args=[], kwargs=namespace)
    except (NameError, KeyError) as exc:
        # An undefined name is said. IPython would log "$name" as text.
        name = getattr(exc, "name", None) or (str(exc.args[0]) if exc.args else "")
        if name.isidentifier() and re.search(rf"(?<!\$)\${re.escape(name)}\b", line):
            raise UsageError(f"${name}: {name!r} is not defined, so it cannot be replaced by "
                             f"its value; define it, or write $${name} to log the text "
                             f"${name}") from None
        return line  # braces of text, as in '{"a": 1}', stay as they are, as in IPython
    except Exception:  # as in IPython, a line that does not format stays as it is
        return line


# --------------------------------------------------------------------------- options
def asks_help(words: list[str]) -> bool:
    """``--help`` anywhere, or ``-h`` alone: the magic then prints its help and does nothing
    else. ``-h`` among other words is data, as is any word with one leading ``-``."""
    return "--help" in words or words == ["-h"]


def parse_args(parser: Any, words: list[str], magic: str) -> argparse.Namespace:
    """Parse options that may come anywhere.

    Every option is ``--long``, so a word with one leading ``-`` is data
    (``%isstream grad -2.5e-05``). argparse alone would take it for an unknown option, so
    such words pass through it masked.
    """
    masked: dict[str, str] = {}
    argv = []
    for i, word in enumerate(words):
        if word[:1] == "-" and word[:2] != "--" and len(word) > 1 and not (
                i and words[i - 1][:2] == "--" and "=" not in words[i - 1]):
            masked[mask := f"\x00{i}"] = word
            word = mask
        argv.append(word)
    try:
        args = parser.parse_intermixed_args(argv)
    except UsageError as exc:  # MagicArgumentParser.error: "unrecognized arguments: --x"...
        raise UsageError(f"{magic}: {exc}; see {magic}? for the options") from None
    if masked:
        for name, value in vars(args).items():
            if isinstance(value, list):
                setattr(args, name, [masked.get(v, v) for v in value])
            elif isinstance(value, str):
                setattr(args, name, masked.get(value, value))
    return args


def check_line_options(args: argparse.Namespace) -> None:
    """Refuse ``%isstream`` options that do not go together."""
    if args.bucket_key is not None and args.bucket is None:
        raise UsageError("--bucket-key goes with --bucket NAME: "
                         "%isstream --bucket NAME --bucket-key KEY")
    if args.timeout is not None and not (args.flush or args.close):
        raise UsageError("--timeout goes with --flush or --close")
    if args.timeout is not None and not args.timeout >= 0:
        raise UsageError(f"--timeout {args.timeout:g}: give seconds, 0 or more")


def check_cell_options(args: argparse.Namespace) -> str:
    """Refuse ``%%isstream`` options that do not go together; return the key prefix."""
    prefix = unquote(args.prefix)
    for name in args.names:
        if not name.isidentifier():
            raise UsageError(f"{name!r} is not a variable name: %%isstream NAME ... logs "
                             f"variables (--prefix P puts P before their keys)")
    if args.bucket_key is not None and args.bucket is None:
        raise UsageError("--bucket-key goes with --bucket NAME")
    if args.lines and (args.names or args.time):
        raise UsageError("--lines reads the body as data; it takes no NAMEs and no --time")
    return prefix


def epoch(events: list[tuple[str, Any]], text: str) -> float:
    """The time ``--epoch T`` gives the events."""
    if not events:
        raise UsageError("--epoch T goes with values to log: %isstream KEY VALUE --epoch T")
    try:
        return coerce_epoch(events[0][0], unquote(text))
    except IsStreamerError as exc:
        raise UsageError(str(exc)) from None


# --------------------------------------------------------------------------- values
def parse_value(text: str, namespace: dict[str, Any] | None = None,
                local_ns: dict[str, Any] | None = None) -> Any:
    """Read a value as the magics do, trying in order:

    1. a Python literal (``32``, ``0.41``, ``True``, ``"32"``, ``'warming up'``);
    2. else a Python expression evaluated in `namespace` (the user's: ``x``, ``np.mean(a)``),
       with `local_ns` as its locals (those of a function that runs the magic);
    3. else, when the text is not valid Python or names something undefined, the bare text
       (``warming``, ``v1.2.3``).

    An expression that is valid Python and fails for another reason (``1/0``, ``obj.typo``) is
    a UsageError, not text: quoting it logs the text.
    """
    if _INT.match(text):
        if len(text) > 4000:  # int() refuses past 4300 digits
            raise UsageError(f"a {len(text)}-digit number is too long to log as a number; "
                             f"quote it to log it as text")
        return int(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return eval(text, namespace if namespace is not None else {}, local_ns)
    except (SyntaxError, NameError):
        return text
    except Exception as exc:
        raise UsageError(f"evaluating {text!r} raised {type(exc).__name__}: {exc}; fix the "
                         f"expression, or quote it to log it as text") from None


def is_spaced(words: list[str]) -> bool:
    """True for ``KEY VALUE``, False for ``KEY=VALUE ...`` and for no words."""
    return bool(words) and _PAIR.match(words[0]) is None


def pairs(words: list[str]) -> list[tuple[str, str]]:
    """The (key, value text) items of ``KEY VALUE`` or ``KEY=VALUE ...`` words."""
    if not words:
        return []
    if _PAIR.match(words[0]) is None:
        key = unquote(words[0])
        if key.startswith("="):
            raise UsageError(f"{key!r} has no key before '=': write `%isstream KEY{key}`")
        if len(words) == 1:
            raise UsageError(f"no value for {key!r}: write `%isstream {key} VALUE` or "
                             f"`%isstream {key}=VALUE`")
        if len(words) > 2:
            raise UsageError(f"`KEY VALUE` takes one value, got {len(words) - 1} words after "
                             f"{key!r}: quote text with spaces ({key} \"{' '.join(words[1:])}\"),"
                             f" or give KEY=VALUE pairs")
        return [(key, words[1])]
    items = []
    for word in words:
        match = _PAIR.match(word)
        if match is None:
            raise UsageError(f"{word!r} is not KEY=VALUE: give every item as KEY=VALUE "
                             f"(quote text with spaces), or one `KEY VALUE`")
        key, value = unquote(match["key"]), match["value"]
        if not value:
            raise UsageError(f"no value after {key}=: write {key}=VALUE "
                             f"({key}=\"\" for an empty string)")
        items.append((key, value))
    return items


def checked(key: str, value: Any) -> tuple[str, Any]:
    """Validate with the core's rules, so a refusal is a UsageError at any debug level."""
    try:
        key = check_key(key)
        return key, coerce_value(key, value)
    except IsStreamerError as exc:
        raise UsageError(str(exc)) from None


def _code_named(text: str, value: Any) -> str:
    """What a bare word that named code is, as "Python's builtin function", or "".

    Unquoted, `open`, `max` and `type` are Python's, not the words.
    """
    if not text.isidentifier():
        return ""
    if isinstance(value, types.ModuleType):
        what = "module"
    elif isinstance(value, type):
        what = "class"
    elif inspect.isroutine(value):
        what = "function"
    else:
        return ""
    builtin = inspect.unwrap(value) is getattr(builtins, text, None)  # IPython's open wraps it
    return f"Python's builtin {what}" if builtin else f"a {what}"


def read(words: list[str], namespace: dict[str, Any], local_ns: dict[str, Any] | None = None,
         prefix: str = "") -> list[tuple[str, Any]]:
    """Checked (key, value) events from the words of ``KEY VALUE`` or ``KEY=VALUE ...``.

    Values are read in `namespace`; refusals are UsageErrors with the core's message.
    """
    events = []
    items = pairs(words)
    spaced = is_spaced(words)
    for key, text in items:
        value = parse_value(text, namespace, local_ns)
        try:
            events.append(checked(prefix + key, value))
        except UsageError:
            what = _code_named(text, value)
            if not what:
                raise
            quoted = f'{key} "{text}"' if spaced else f'{key}="{text}"'
            raise UsageError(f"value for key {prefix + key!r}: {text} is {what}, not text: "
                             f"to log the word, quote it: {quoted}") from None
    return events


def read_lines(body: str, namespace: dict[str, Any],
               prefix: str = "") -> tuple[list[tuple[str, Any]], list[str]]:
    """The events of a ``--lines`` body, and a problem for each bad line, by its number.

    Blank lines and ``#`` comments are skipped.
    """
    events: list[tuple[str, Any]] = []
    bad: list[str] = []
    for number, raw in enumerate(body.splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            events += read(split_line(text), namespace, None, prefix)
        except UsageError as exc:
            bad.append(f"line {number}: {exc}")
    return events, bad


def lines_problem(bad: list[str], logged: int) -> str:
    """The one line that reports the bad lines of a ``--lines`` body."""
    good = f"the other {counted(logged, 'event', 'were')} logged" if logged else "none logged"
    return f"--lines: {counted(len(bad), 'bad line')} ({good}): " + "; ".join(bad)


# --------------------------------------------------------------------------- a cell's results
def assigned_names(tree: ast.Module) -> list[str]:
    """Names bound by the cell's top-level assignment statements, in order: ``x = ...``,
    ``a, (b, *c) = ...``, ``x: int = ...``, ``x += ...``. Loops, ``with``, imports, function
    and class definitions, attributes and subscripts are not assignments of a result; a
    ``_private`` name is no result either, as log_object leaves them out."""
    names: dict[str, None] = {}

    def add(target: ast.expr) -> None:
        if isinstance(target, ast.Name):
            if not target.id.startswith("_"):
                names.setdefault(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                add(element)
        elif isinstance(target, ast.Starred):
            add(target.value)

    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                add(target)
        elif isinstance(node, ast.AugAssign) or (
                isinstance(node, ast.AnnAssign) and node.value is not None):
            add(node.target)
    return list(names)


def auto_loggable(value: Any) -> bool:
    """What the cell magic logs without being named: numbers, numpy scalars too, bools and
    strings up to the core's limit. Everything else must be named, or is skipped."""
    kind = type(value)
    if kind is str:
        return len(value) <= VALUE_MAX
    if kind is bool or kind is int or kind is float:
        return True
    if isinstance(value, str):
        return len(value) <= VALUE_MAX
    if isinstance(value, numbers.Real):  # numpy ints and floats, Fraction, IntEnum...
        return True
    return kind.__module__ == "numpy" and getattr(value, "dtype", None) is not None \
        and getattr(value, "shape", None) == () and value.dtype.kind in "biuf"


def pick_named(names: list[str], prefix: str,
               namespace: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The named variables as events, by the core's rules, and a problem for each refused or
    missing one."""
    events, problems = [], []
    for name in names:
        if name not in namespace:
            problems.append(f"no variable {name!r} after the cell ran: check the name")
            continue
        try:
            events.append(checked(prefix + name, namespace[name]))
        except UsageError as exc:
            problems.append(str(exc))
    return events, problems


def pick_assigned(names: list[str], prefix: str,
                  namespace: Mapping[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The assigned names whose values are plainly loggable as events, and the names
    skipped."""
    events, skipped = [], []
    for name in names:
        value = namespace.get(name, _MISSING)
        if value is _MISSING:  # deleted in the cell: nothing to log, nothing to say
            continue
        try:
            if not auto_loggable(value):
                raise UsageError(name)
            events.append(checked(prefix + name, value))
        except UsageError:
            skipped.append(name)
    return events, skipped
