"""Offline recordings: read an offline CSV (ours or ISStreamer's) and upload it later.

The rows are ISStreamer's ``epoch,key,value``; ours add ``# bucket: <key> <name>`` lines so the
rows go back to the bucket they were logged to. An upload keeps the original timestamps, goes
as fast as the rate limits allow, and records after every acknowledged request how far it got
in ``<file>.upload.json``: interrupted and run again, it sends again at most the batch whose
answer the interruption cut off. It also keeps
there how many of those rows the service refused, so a rerun still says they were not
delivered (the unreadable rows it re-reads from the file, and says again itself).

The progress is kept per destination, named by the spool's one-way fingerprint of (API base,
access key), so a trial upload to a test receiver leaves the real upload to do; the key is
never written. A progress file of the older form (one that did not say where its rows went)
belongs to no known destination: its rows are sent again, with a note saying so.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import hashlib
import json
import math
import os
import re
import stat
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import _errors as err
from ._config import (
    BY_NAME,
    check_bucket,
    derive_bucket_key,
    given_source,
    hide_secrets,
    resolve,
)
from ._errors import ConfigError, EventsLost, IsStreamerError, RefusedValue
from ._events import check_key, coerce_epoch, coerce_value
from ._report import error_for
from ._spool import FILE_MODE, fingerprint

try:
    import fcntl  # (POSIX: one upload of a file at a time; elsewhere, the user's care)
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STATE_SUFFIX = ".upload.json"
NO_BUCKET = "no bucket: pass --bucket-name (the file names none)"
#: a last line with no line end: a recorder may still be writing it (its value may be cut
#: short, 2 of 21.5, and still read as one)
UNFINISHED = ("the last line has no line end: it may still be being written; upload again once "
              "the recording is finished (a file that is complete: end that line)")
#: a batch the service has not acknowledged is said after this many seconds, then every
#: WAIT_NOTE_EVERY seconds, until the upload's timeout
WAIT_NOTE_AFTER = 10.0
WAIT_NOTE_EVERY = 60.0
STATE_FORMAT = 2  # {"format": 2, "destinations": {fingerprint: {target: progress}}}
LEGACY_NOTE = ("the progress file {name} is of an older form, or damaged, and does not say "
               "where all its rows went: they are sent again to this destination (some may "
               "now be there twice)")


class ProgressNotSaved(ConfigError):
    """The progress file could not be written after a batch was delivered: that batch is not
    recorded as done, and a rerun sends it again."""


@dataclass(frozen=True)
class Row:
    line: int
    bucket_name: str
    bucket_key: str
    epoch: float
    key: str
    value: str | int | float | bool


@dataclass
class UploadSummary:
    path: str
    sent: int = 0
    already_sent: int = 0  # rows an earlier, interrupted upload delivered
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    refused: int = 0  # rows the service refused (each alone): see the streamer's last error
    refused_earlier: int = 0  # rows the service refused to an earlier run (not sent again)
    unfinished: int = 0  # the last line, without its line end (maybe still being written): a
    # rerun sends it once it is ended
    buckets: dict[str, str] = field(default_factory=dict)  # key -> name
    seconds: float = 0.0
    error: str = ""
    stopped_by: type[IsStreamerError] | None = None  # the kind of `error` (AccessDenied, ...)
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def not_sent(self) -> int:
        """Rows of the file that are not delivered and will not be, however often it runs:
        unreadable, or refused by the service (to this run or an earlier one)."""
        return len(self.bad_rows) + self.refused + self.refused_earlier

    def __str__(self) -> str:
        return self.report()

    def report(self, stopped: bool = True) -> str:
        """What it did; `stopped=False` leaves out why it stopped (for a caller that says it
        with its own fix)."""
        lines = [f"uploaded {err.counted(self.sent, 'event')} from {self.path} in "
                 f"{self.seconds:.1f} s"
                 + (f" ({err.counted(self.already_sent, 'event', 'were')} sent by an earlier "
                    f"run)"
                    if self.already_sent else "")]
        for key, name in self.buckets.items():
            lines.append(f"  bucket {name!r} ({key})")
        if self.bad_rows:
            lines.append(f"  {err.counted(len(self.bad_rows), 'row')} skipped:")
            lines += [f"    line {n}: {why}" for n, why in self.bad_rows[:20]]
            if len(self.bad_rows) > 20:
                lines.append(f"    … and {len(self.bad_rows) - 20} more")
        if self.unfinished:
            lines.append(f"  line {self.unfinished} not sent yet: {UNFINISHED}")
        if self.refused:
            lines.append(f"  {self.refused} refused by the service (sent alone, each refused: "
                         f"they are not sent again)")
        if self.refused_earlier:
            lines.append(f"  {self.refused_earlier} refused by the service in an earlier run "
                         f"(they are not sent again)")
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.error and stopped:
            lines.append(f"  stopped: {self.error}")
        return "\n".join(lines)


# (no leading zero but the units' own: no number is written so, and text such as a zip
# code, 02134, or an id, 007, keeps its zeros)
_INT_TEXT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)", re.ASCII)
_FLOAT_TEXT = re.compile(r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?",
                         re.ASCII)


def parse_value(text: str) -> str | int | float | bool:
    """CSV has no types: whole numbers, then (finite) numbers, then True/False, else the
    text ("nan" stays the text it was logged as; so does a number with a leading zero)."""
    for kind, shape in ((int, _INT_TEXT), (float, _FLOAT_TEXT)):
        if not shape.fullmatch(text):  # what repr() writes; not '1_000', ' 7 ', '١٢'
            continue
        try:
            number = kind(text)
        except ValueError:
            continue
        if number == number and number not in (float("inf"), float("-inf")):
            return number
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    return text


_UNDECODED = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as surrogateescape reads it


def _not_utf8(text: str) -> str:
    """Why `text` (read with errors="surrogateescape") cannot be sent, or ''."""
    found = _UNDECODED.search(text)
    return (f"not UTF-8 text (byte 0x{ord(found.group()) - 0xDC00:02x}): the file must be "
            f"UTF-8 to send this" if found else "")


def _cut_short(text: str) -> str:
    """`text` (read with errors="surrogateescape") less a UTF-8 character cut short at its end,
    as a line still being written may end: the start of one, not an error."""
    for size in (3, 2, 1):  # (a character is 4 bytes at most)
        tail = text[-size:]
        if len(tail) < size or not all(_UNDECODED.fullmatch(c) for c in tail):
            continue
        try:
            if not codecs.getincrementaldecoder("utf-8")().decode(
                    bytes(ord(c) - 0xDC00 for c in tail)):
                return text[:-size]
        except UnicodeDecodeError:
            pass
    return text


def _rows_bucket_problem(name: str, key: str, line: int) -> str:
    """Why the rows under the '# bucket:' line `line` cannot be sent, or ''."""
    problem = _not_utf8(name + key)
    if not problem:
        try:
            check_bucket(name, key)
        except ConfigError as exc:
            problem = str(exc)
    return f"the bucket of line {line} cannot be used: {problem}" if problem else ""


def read_rows(path: Path, bucket_name: str = "", bucket_key: str = "",
              fallback: tuple[str, str] = ("", "")) -> Iterator[Row | tuple[int, str]]:
    """Rows of a recording, or ``(line, reason)`` for a row that cannot be sent.

    An explicit bucket overrides the file's ``# bucket:`` lines; `fallback` (name, key) serves
    rows before any such line. The rows under a line naming a bucket the service would refuse
    are not sent (nor to the bucket before): each is a ``(line, reason)``, as is a row with
    bytes that are not UTF-8. A last line without its line end is ``(line, UNFINISHED)``: a
    recorder may still be writing it, and what it holds may read as a whole row though it is
    not (``2`` of ``21.5``); a later run sends it once it is ended.
    """
    current = (bucket_name, bucket_key) if bucket_name or bucket_key else fallback
    unusable = ""  # why the bucket of the file's last '# bucket:' line cannot be used
    # (utf-8-sig: a byte-order mark some editors write is not part of the first row)
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        at_start = True  # (the next line begins a row, not the inside of a quoted value)
        unended = False  # the file's last line has no line end: it may be half written

        def lines() -> Iterator[str]:
            # a '#' line between rows is one cell whatever it holds (a bucket name may hold
            # ," which would open a quoted field swallowing the rest of the file)
            nonlocal at_start, unended
            for raw in fh:
                unended = not raw.endswith(("\n", "\r"))
                if at_start and raw.startswith("#"):
                    raw = '"' + raw.rstrip("\r\n").replace('"', '""') + '"\n'
                at_start = False
                yield raw

        reader = csv.reader(lines())  # a quoted value may span lines: line_num is its end
        first_line = 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                number, first_line = first_line, reader.line_num + 1
                at_start = True
                yield number, f"not a CSV row: {exc}"
                continue
            at_start = True
            number, first_line = first_line, reader.line_num + 1
            if not cells or not any(cells):
                continue
            if cells[0].startswith("#"):
                line = ",".join(cells)
                parts = line[len("# bucket:"):].strip().split(" ", 1)
                if line.startswith("# bucket:") and parts[0] and not (bucket_name or bucket_key):
                    current = (parts[1] if len(parts) > 1 else parts[0], parts[0])
                    unusable = _rows_bucket_problem(*current, number)
                continue
            text = "".join(cells)
            if unended and not _not_utf8(_cut_short(text)):  # (bytes that are no UTF-8 will
                # not become some: said below.) Not sent, so not marked as done: a later run
                yield number, UNFINISHED  # sends it whole
                continue
            if problem := _not_utf8(text):
                yield number, problem
                continue
            if len(cells) != 3:
                yield number, f"expected 3 columns epoch,key,value; found {len(cells)}"
                continue
            if number == 1 and [c.strip().lower() for c in cells] == ["epoch", "key", "value"]:
                continue  # (a header line, added by hand or by a spreadsheet)
            if unusable:
                yield number, unusable
                continue
            name, key = current
            if not (name or key):
                yield number, NO_BUCKET
                continue
            try:
                event_key = check_key(cells[1])
                value = coerce_value(event_key, parse_value(cells[2]))
                epoch = coerce_epoch(event_key, cells[0])
            except RefusedValue as exc:
                yield number, str(exc)
                continue
            name = name or key
            yield Row(number, name, key or derive_bucket_key(name), epoch, event_key, value)


_HEAD = 65536


def _not_a_recording(start: bytes) -> str:
    """Why a file beginning with `start` is no CSV recording at all, with the fix, or "":
    UTF-16 text, or binary data (NUL bytes in what is not UTF-8: an image, an archive). A NUL
    in UTF-8 text may be a logged value's: such a file is read row by row."""
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "it is UTF-16 text; save it as UTF-8 (CSV UTF-8) and upload that"
    if b"\0" not in start:
        return ""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(start)  # (its end may cut a character)
    except UnicodeDecodeError:
        return (f"it holds binary data (NUL bytes, and bytes that are no UTF-8, in its first "
                f"{_HEAD // 1024} KiB). Give the CSV file that offline recording wrote "
                f"(offline_file)")
    return ""


def _head(source: Path, size: int) -> str:
    """A fingerprint of the recording's first bytes (a recording only grows: a file put in
    its place has other epochs there)."""
    with source.open("rb") as fh:
        return hashlib.sha256(fh.read(min(size, _HEAD))).hexdigest()


_ENTRY = {"line": int, "refused": int, "size": int, "head": str}  # one target's progress


def _read_state(state_path: Path) -> tuple[dict[str, dict[str, dict[str, Any]]], bool]:
    """The progress file's destinations, and whether the file held progress it could not use
    (the older form, which does not say where its rows went; or damaged, or edited): none of
    that is trusted, so those rows are sent again."""
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        return {}, False
    except (OSError, ValueError):
        return {}, True
    destinations = state.get("destinations") if isinstance(state, dict) else None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(
            destinations, dict):
        return {}, True
    kept = {where: {target: entry for target, entry in targets.items()
                    if isinstance(entry, dict) and all(
                        type(entry.get(name)) is kind for name, kind in _ENTRY.items())}
            for where, targets in destinations.items() if isinstance(targets, dict)}
    whole = sum(map(len, kept.values())) == sum(
        len(targets) if isinstance(targets, dict) else 1 for targets in destinations.values())
    return kept, not whole


def _load_state(state_path: Path, destination: str, target: str, size: int,
                source: Path) -> tuple[int, int, bool]:
    """(the last line handled for `destination`, how many rows up to it the service refused,
    whether the file held progress it could not use)."""
    destinations, unusable = _read_state(state_path)
    entry = destinations.get(destination, {}).get(target)
    if entry is None or entry["size"] > size:  # (a shorter file replaced it: start over)
        return 0, 0, unusable
    if entry["head"] != _head(source, entry["size"]):  # replaced by another recording
        return 0, 0, unusable
    return entry["line"], entry["refused"], False  # (what else it held is not this upload's)


def _save_state(state_path: Path, destination: str, target: str, line: int, refused: int,
                size: int, head: str, *, check: bool = False) -> None:
    """Write the progress; `check`: only see that it can be written (through its .tmp file,
    removed again), leaving the progress file as it is."""
    destinations, _ = _read_state(state_path)  # (what could not be used is dropped)
    destinations.setdefault(destination, {})[target] = {
        "line": line, "refused": refused, "size": size, "head": head}
    tmp = state_path.with_name(state_path.name + ".tmp")
    try:  # (the progress file is the .tmp renamed: it keeps the .tmp's mode)
        with _private(tmp, os.O_WRONLY | os.O_TRUNC) as fh:
            fh.write(json.dumps({"format": STATE_FORMAT, "destinations": destinations}))
        if not check:
            os.replace(tmp, state_path)
        elif state_path.is_dir():  # (os.replace would fail on it)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        else:
            tmp.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"the progress file {state_path} cannot be written "
                          f"({_unwritable(state_path, tmp, exc)})") from None


def _private(path: Path, flags: int) -> TextIO:
    """`path` opened for writing (made if missing) for its owner only, as the spool is:
    progress files name what was uploaded where."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        with contextlib.suppress(PermissionError):  # (another user's file: theirs to set)
            os.fchmod(fd, FILE_MODE)  # (open()'s mode is cut by the umask; fchmod's is not)
        return os.fdopen(fd, "a" if flags & os.O_APPEND else "w", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def _unwritable(state_path: Path, tmp: Path, exc: OSError) -> str:
    """Why the progress file could not be written (through `tmp`), and the fix."""
    if state_path.is_dir():
        return "it is a folder: move it out of the way"
    if tmp.is_dir():
        return f"{tmp.name}, which it is written through, is a folder: move that out of the way"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{exc.strerror}: make {state_path.parent} writable, or upload a copy of the "
                f"recording from a folder you can write to")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.strerror}: free some space"
    return str(exc.strerror or exc)


@contextlib.contextmanager
def _one_at_a_time(state_path: Path) -> Iterator[None]:
    """Hold ``<progress file>.lock`` for the upload: two uploads of one file at once would
    send rows twice and write the progress over each other.

    The lock file is removed at the end, while still held. That is race-free because an
    upload counts the lock as its own only once it holds the file that is at the path: one
    that opened the file before it was removed and locked it after holds a file no longer
    there, so it lets it go and opens the path anew (else a third upload could create and lock
    a new file, and two would run at once)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock_path = state_path.with_name(state_path.name + ".lock")
    while True:
        try:
            fh = _private(lock_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise ConfigError(f"cannot create {lock_path} ({exc.strerror or exc}): make the "
                              f"recording's folder writable") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fh.fileno())
            there = os.stat(lock_path)
        except FileNotFoundError:  # (removed by the upload that held it: open it anew)
            fh.close()
            continue
        except OSError:
            fh.close()
            raise ConfigError(f"another upload of {state_path.name.removesuffix(STATE_SUFFIX)}"
                              f" is running: wait for it to end") from None
        if (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
            break
        fh.close()  # (removed, and a new one made there: open that)
    with fh:
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_path.unlink()  # (still held: see above)


def upload(path: str | os.PathLike[str], *, bucket_name: str = "", bucket_key: str = "",
           fallback: tuple[str, str] = ("", ""), progress: bool = True, timeout: float = 600.0,
           given_as: Mapping[str, str] | None = None, **settings: Any) -> UploadSummary:
    """Upload an offline recording; `settings` are Streamer keyword settings (access key, ...).

    Sends in order, one acknowledged batch at a time, and remembers after each how far it
    got, so a rerun after an interruption sends again at most the batch in flight then.
    `given_as` names what a front end's user wrote for `timeout` and `settings` (as in
    :func:`._config.resolve`), for messages.
    """
    settings = hide_secrets(settings)  # (first: a verbose traceback shows it as it is then)
    from tqdm.auto import tqdm

    from ._streamer import Streamer

    if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
        raise ConfigError(f"timeout = {timeout!r} from {given_source('timeout', given_as)}: "
                          f"expected the seconds a batch may wait for the service, more than 0 "
                          f"(default 600)")
    source = Path(path)
    if not source.exists():
        raise ConfigError(f"{source}: no such recording")
    if not (stat.S_ISREG(source.stat().st_mode) or source.is_dir()):  # (a directory: below)
        raise ConfigError(f"{source} is not a file (a pipe or a device can be read only once, "
                          f"and an upload reads the recording twice): copy it to a file first")
    if bucket_name or bucket_key:
        check_bucket(bucket_name or bucket_key, bucket_key or derive_bucket_key(bucket_name))
    # (upload's timeout is not the setting of that name: its name is not the settings')
    given_as = {k: v for k, v in (given_as or {}).items() if k in settings}
    resolved = resolve({k: v for k, v in settings.items() if k in BY_NAME}, given_as=given_as)
    if not resolved.access_key:
        raise ConfigError("upload needs an access key: set IS_ACCESS_KEY (or access_key under "
                          "[isstreamer.client_config] in isstreamer.ini)")
    batch_size = resolved.batch_size
    try:  # (read it all once before sending anything: a file it cannot read cannot start)
        size = source.stat().st_size
        head = _head(source, size)
        with source.open("rb") as fh:
            if problem := _not_a_recording(fh.read(_HEAD)):
                raise ConfigError(f"{source} is not a CSV recording: {problem}")
        rows = Counter(type(row) if isinstance(row, Row) else row[1]
                       for row in read_rows(source, bucket_name, bucket_key, fallback))
    except OSError as exc:
        raise ConfigError(f"{source} cannot be read ({exc.strerror or exc}): give a recording "
                          f"(a CSV file) that you may read") from None
    total = rows[Row]
    if not total and rows[NO_BUCKET]:  # (a mistake in the command: no row could go anywhere)
        raise ConfigError(f"{source} does not say which bucket its rows go to (an ISStreamer "
                          f"recording does not): give one, with --bucket-name NAME on the "
                          f"command line or bucket_name=... in Python")
    state_path = source.with_name(source.name + STATE_SUFFIX)
    with _one_at_a_time(state_path):  # (before reading the progress: see there)
        # (a file without '# bucket:' lines goes to the fallback: which one is part of where)
        target = bucket_key or bucket_name or (
            f"(file buckets, else {fallback[1] or fallback[0]})" if any(fallback) else
            "(file buckets)")
        destination = fingerprint(resolved.api_base, resolved.access_key)  # (never the key)
        done_line, refused_earlier, legacy = _load_state(state_path, destination, target, size,
                                                         source)
        if total:  # (the progress is written before sending: one that cannot be written
            # stops the upload now, not after a batch whose delivery it could not record; a
            # progress file it could not use is only checked, not replaced: if this run sends
            # nothing, the next must still say that rows may go twice)
            try:
                _save_state(state_path, destination, target, done_line, refused_earlier, size,
                            head, check=legacy)
            except ConfigError as exc:
                raise ConfigError(f"{exc}; nothing was sent") from None
        summary = UploadSummary(str(source), refused_earlier=refused_earlier)
        if legacy:
            summary.note = LEGACY_NOTE.format(name=state_path.name)
        started = time.monotonic()
        streamer: Streamer | None = None
        bar = tqdm(total=total, disable=not progress, unit="ev", desc=source.name)
        pending: list[Row] = []

        def wait(streamer: Streamer) -> err.DeliveryError | None:
            """Flush, within `timeout`; a batch that waits on the service is said (the first
            time after WAIT_NOTE_AFTER s, then every WAIT_NOTE_EVERY s): the bar alone would
            stand still without a word. (All the sending is done here: the streamer's batch
            is one more than ours, so log() never sends, and its requests end within the
            upload's timeout.)"""
            deadline = time.monotonic() + timeout
            step = WAIT_NOTE_AFTER
            while True:
                end = min(time.monotonic() + step, deadline)
                error = error_for(streamer.flush_report(max(0.0, end - time.monotonic())))
                if not isinstance(error, err.FlushTimeout) or streamer.stopped:
                    return error
                # (the next try is due after `end`: flush returned without waiting for it)
                time.sleep(max(0.0, end - time.monotonic()))
                left = deadline - time.monotonic()
                if left < 1:
                    return error
                reason = streamer.stats().last_error or "no answer yet"
                with warnings.catch_warnings():  # (the rest of the upload's are ignored)
                    warnings.simplefilter("always", err.IsStreamerWarning)
                    err.warn(f"upload: a batch has waited {timeout - left:.0f} s for the "
                             f"service ({reason}); trying again for up to {left:.0f} s more "
                             f"(interrupted, the same upload goes on where it stopped)")
                step = WAIT_NOTE_EVERY

        def ship() -> None:
            nonlocal streamer
            first = pending[0]
            if streamer is None:
                options = {**settings, "batch_size": batch_size + 1,
                           "timeout": min(resolved.timeout, timeout)}
                options.pop("buffer_size", None)
                streamer = Streamer(first.bucket_name, first.bucket_key, use_async=False,
                                    spool=False, offline=False, given_as=given_as, **options)
            elif first.bucket_key != streamer.BucketKey:
                streamer.set_bucket(first.bucket_name, first.bucket_key)
            summary.buckets[first.bucket_key] = first.bucket_name
            for row in pending:
                streamer.log(row.key, row.value, row.epoch)
            error = wait(streamer)
            refused = error.refused if isinstance(error, EventsLost) else 0
            if error is not None and (not isinstance(error, EventsLost) or error.dropped):
                # (the upload stops here: its last error, which says no "retrying in N s")
                raise type(error)(streamer.stats().last_error or str(error))
            # (refused rows are final)
            summary.sent += len(pending) - refused
            summary.refused += refused
            try:
                _save_state(state_path, destination, target, pending[-1].line,
                            refused_earlier + summary.refused, size, head)
            except ConfigError as exc:
                raise ProgressNotSaved(f"{exc}, so the last {len(pending)} rows sent, up to line "
                                       f"{pending[-1].line}, are not recorded as done") from None
            bar.update(len(pending))
            pending.clear()

        with warnings.catch_warnings():  # (what goes wrong, the summary says: once, without a
            warnings.simplefilter("ignore")  # warning that points into the package)
            try:
                for row in read_rows(source, bucket_name, bucket_key, fallback):
                    if not isinstance(row, Row):
                        if row[1] == UNFINISHED:
                            summary.unfinished = row[0]
                        else:
                            summary.bad_rows.append(row)
                        continue
                    if row.line <= done_line:
                        summary.already_sent += 1
                        bar.update(1)
                        continue
                    if pending and (len(pending) >= batch_size
                                    or pending[-1].bucket_key != row.bucket_key):
                        ship()
                    pending.append(row)
                if pending:
                    ship()
            except IsStreamerError as exc:
                summary.error, summary.stopped_by = str(exc), type(exc)
            finally:
                bar.close()
                if streamer is not None:  # (stopped: what it sent now would be sent again)
                    streamer.close(1, send=not pending)
                summary.seconds = time.monotonic() - started
        # (the rows up to the saved line were handled before: all delivered but those refused)
        summary.already_sent = max(0, summary.already_sent - refused_earlier)
        return summary
