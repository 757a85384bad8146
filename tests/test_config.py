"""Settings: keyword > environment > ./isstreamer.ini > ~/isstreamer.ini > default."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest

from isstreamer_jupyter import ConfigError
from isstreamer_jupyter._config import (
    MASK,
    SETTINGS,
    Secret,
    derive_bucket_key,
    hidden,
    resolve,
)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for setting in SETTINGS:
        for name in setting.env:
            monkeypatch.delenv(name, raising=False)
    return home, work


def write_ini(folder, client="", api=""):
    text = "[isstreamer.client_config]\n" + client
    if api:
        text += "\n[isstreamer.api_config]\n" + api
    (folder / "isstreamer.ini").write_text(text)


def test_defaults_without_any_source_record_offline(folders):
    s = resolve({})
    assert s.offline is True
    assert "no access key" in s.offline_reason
    assert s.batch_size == 10 and s.flush_interval == 1.0 and s.max_requests_per_second == 3.0
    assert s.api_base == "https://groker.init.st/api"


def test_precedence_keyword_env_cwd_home(folders, monkeypatch):
    home, work = folders
    write_ini(home, "batch_size = 7\nflush_interval = 4\nmax_requests_per_second = 5\n"
                    "access_key = from_home\n")
    assert resolve({}).batch_size == 7
    write_ini(work, "batch_size = 8\nflush_interval = 3\n")
    s = resolve({})
    assert (s.batch_size, s.flush_interval, s.max_requests_per_second) == (8, 3.0, 5.0)
    assert s.access_key == "from_home" and s.offline is False  # the home file still fills gaps
    monkeypatch.setenv("IS_BATCH_SIZE", "9")
    assert resolve({}).batch_size == 9
    assert resolve({"batch_size": 11}).batch_size == 11
    assert "environment variable IS_BATCH_SIZE" in resolve({}).sources["batch_size"]


def test_isstreamer_ini_names_and_api_base_forms(folders):
    _, work = folders
    write_ini(work, "access_key = abc\ndefault_bucket = Lab\noffline_mode = False\n",
              "stream_api_base = http://127.0.0.1:9999")
    s = resolve({})
    assert s.bucket_name == "Lab" and s.offline is False
    assert s.api_base == "http://127.0.0.1:9999/api"  # ISStreamer names the host only


def test_stream_api_base_is_read_without_client_section_too(folders):
    _, work = folders
    (work / "isstreamer.ini").write_text("[isstreamer.api_config]\nstream_api_base = "
                                         "https://example.invalid/api/\n")
    assert resolve({}).api_base == "https://example.invalid/api"


@pytest.mark.parametrize("raw", ["False", "false", "FALSE", "no", "0", "off"])
def test_booleans_any_case(folders, monkeypatch, raw):
    monkeypatch.setenv("IS_OFFLINE", raw)
    assert resolve({"access_key": "k"}).offline is False


def test_offline_forced_on_with_a_key(folders, monkeypatch):
    monkeypatch.setenv("IS_OFFLINE", "True")
    s = resolve({"access_key": "k"})
    assert s.offline is True and "IS_OFFLINE" in s.offline_reason


@pytest.mark.parametrize(
    ("env", "raw", "words"),
    [
        ("IS_BATCH_SIZE", "ten", "batch_size = 'ten' from environment variable IS_BATCH_SIZE"),
        ("IS_BATCH_SIZE", "0", "at least 1"),
        ("IS_FLUSH_INTERVAL", "0", "above 0"),
        ("IS_MAX_RPS", "-1", "at least 0"),
        ("IS_OFFLINE", "maybe", "expected true or false"),
        ("IS_API_BASE", "ftp://x", "http:// or https://"),
        ("IS_FLUSH_TIMEOUT", "nan", "expected a number above 0, or inf (until delivered), "
                                    "not NaN"),
        ("IS_FLUSH_TIMEOUT", "-1", "above 0"),
        ("IS_FLUSH_INTERVAL", "inf", "not inf: events would wait forever for a fuller batch"),
        ("IS_TIMEOUT", "inf", "not inf: a request to a silent service would never end"),
        ("IS_TIMEOUT", "1e12", "above 0 and at most 1e+09"),
        ("IS_EXIT_TIMEOUT", "inf", "not inf: the interpreter would not exit while the service "
                                   "is down"),
        ("IS_MAX_RPS", "inf", "not inf: for no pacing give 0"),
        ("IS_SPOOL_MAX_BYTES", "10", "expected a whole number at least 1,000,000"),  # (all dropped)
    ],
)
def test_bad_values_name_setting_and_source(folders, monkeypatch, env, raw, words):
    monkeypatch.setenv(env, raw)
    with pytest.raises(ConfigError, match=re.escape(words)):
        resolve({})



def test_an_infinite_flush_timeout_means_until_delivered(folders, monkeypatch):
    """flush_timeout=inf was refused as 'expected a number above 0' (the wrong reason)."""
    monkeypatch.setenv("IS_FLUSH_TIMEOUT", "inf")
    assert resolve({}).flush_timeout == math.inf
    assert resolve({"flush_timeout": float("inf")}).flush_timeout == math.inf


def test_bad_ini_value_names_the_file(folders):
    _, work = folders
    write_ini(work, "flush_interval = soon\n")
    with pytest.raises(ConfigError) as info:
        resolve({})
    assert "isstreamer.ini [isstreamer.client_config] flush_interval" in str(info.value)


def test_a_bad_access_key_source_never_echoes_it(folders):
    with pytest.raises(ConfigError):
        resolve({"access_key": "secret-value", "batch_size": "x"})
    s = resolve({"access_key": "secret-value"})
    assert "secret-value" not in repr(s)


def test_the_access_key_is_a_secret_from_every_source(folders, monkeypatch):
    """Wherever it is read from, the key is a Secret: the key as text, the mask as a value
    (a verbose traceback shows the values of the names in each frame's line)."""
    _, work = folders
    write_ini(work, f"access_key = {SECRET}\n")
    from_ini = resolve({})
    other = work / "other.ini"
    other.write_text(f"[isstreamer.client_config]\naccess_key = {SECRET}\n")
    from_location = resolve({}, ini_file_location=other)
    monkeypatch.setenv("IS_API_ACCESS_KEY", f" {SECRET}\n")
    from_environment = resolve({})
    from_mapping = resolve({}, environ={"IS_ACCESS_KEY": SECRET})
    from_keyword = resolve({"access_key": SECRET})
    streamers = [streamer_with(access_key=SECRET), streamer_with(client_key=SECRET)]
    for key in [from_ini.access_key, from_location.access_key, from_environment.access_key,
                from_mapping.access_key, from_keyword.access_key,
                *(s.settings.access_key for s in streamers)]:
        assert type(key) is Secret and key == SECRET and repr(key) == repr(MASK)
    assert from_environment.sources["access_key"] == "environment variable IS_API_ACCESS_KEY"
    (work / "isstreamer.ini").unlink()
    assert resolve({}, environ={}).access_key == ""  # (no key: recording locally, as before)


def test_a_secret_is_the_key_as_text_and_the_mask_as_a_value():
    import copy
    import dataclasses
    import logging
    import pickle
    import pprint
    import pydoc

    from IPython.lib.pretty import pretty

    from isstreamer_jupyter._config import Settings
    from isstreamer_jupyter._spool import fingerprint

    key = Secret(SECRET)
    # as text (the header, the spool's fingerprint, comparisons): the key itself
    assert key == SECRET and hash(key) == hash(SECRET) and SECRET in {key}
    assert str(key) == SECRET and type(str(key)) is str
    assert "%s" % key == SECRET  # noqa: UP031 - (the formatting asked about)
    assert key.encode("latin-1") == SECRET.encode()  # (what http.client sends)
    # (the same namespace as before it was a Secret: spools written then still match)
    assert fingerprint("https://groker.init.st/api", key) == "fc17ac2788fdf38487a229c2"
    assert fingerprint("https://groker.init.st/api", SECRET) == "fc17ac2788fdf38487a229c2"

    # as a value: the mask
    @dataclasses.dataclass
    class Holder:
        key: str

    record = logging.LogRecord("isstreamer_jupyter", logging.INFO, __file__, 1, "key %r",
                               (key,), None)
    shown = [repr(key), f"{key}", f"{key!r}", f"{key:>12}", "%r" % key,  # noqa: UP031
             "{}".format(key),  # noqa: UP032 - (the formatting asked about)
             repr([key]), repr({"access_key": key}), pprint.pformat({"access_key": key}),
             pretty(key), pretty({"access_key": key}), pydoc.text.repr(key),
             pydoc.text.repr({"access_key": key}), repr(Holder(key)), record.getMessage()]
    for text in shown:
        assert SECRET not in text and MASK in text, text
    assert repr(Secret("")) == "''" and f"{Secret('')}" == "" and not Secret("")

    # copies are itself; a pickle would hold the key in clear: refused, without showing it
    settings = Settings(access_key=key)
    assert copy.copy(key) is key and copy.deepcopy(key) is key
    assert copy.deepcopy(settings).access_key is key
    assert dataclasses.asdict(settings)["access_key"] is key
    for what in (key, settings):
        with pytest.raises(TypeError, match="not pickled") as info:
            pickle.dumps(what)
        assert SECRET not in str(info.value)

    # text made from it is plain text again: hidden() wraps what is kept
    assert type(key.strip()) is str and type(hidden(key.strip())) is Secret
    assert hidden(None) is None and hidden(3) == 3 and type(hidden(key)) is Secret


@pytest.mark.parametrize("key", ["secret\nvalue", "secret\x00value", "secrét-value"])
def test_an_access_key_a_header_cannot_carry_is_refused_without_showing_it(folders, key):
    with pytest.raises(ConfigError, match=r"access_key ?= ?\(hidden\)") as info:
        resolve({"access_key": key})
    assert "secret" not in str(info.value)
    assert resolve({"access_key": " secret-value\n"}).access_key == "secret-value"


@pytest.mark.parametrize("key", [b"ik_bytes_key_5d2e8b", bytearray(b"ik_bytes_key_5d2e8b"),
                                 ["ik_list_key_5d2e8b"], 52468291])
def test_an_access_key_that_is_not_a_string_is_refused_without_showing_it(folders, key):
    """str() of b"key" is "b'key'", which was taken as the key (printable ASCII): every request
    would then be refused, and nothing said why."""
    from isstreamer_jupyter import Streamer
    from isstreamer_jupyter.testing import FakeTransport

    for kwargs in ({"access_key": key}, {"client_key": key}):
        with pytest.raises(ConfigError) as info:
            streamer_with(**kwargs)
        assert str(info.value) == (f"access_key = (hidden) from keyword argument: expected a "
                                   f"string, not {type(key).__name__}. Fix: change it, or leave "
                                   f"it out for the default (none)")
    s = Streamer(access_key="ik_good_key_5d2e8b", transport=FakeTransport(), spool=False)
    s._custom_transport = False  # the fake stands in for the HTTP transport here
    try:
        with pytest.raises(ConfigError) as info:
            s.AccessKey = key
        assert str(info.value) == f"access_key = (hidden): expected a string, not " \
                                  f"{type(key).__name__}"
        assert s.settings.access_key == "ik_good_key_5d2e8b"
    finally:
        s.close(timeout=5)


def test_missing_ini_file_location_is_an_error(folders, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve({}, ini_file_location=tmp_path / "nope.ini")


def test_zero_pacing_is_allowed(folders):
    assert resolve({"max_requests_per_second": 0}).max_requests_per_second == 0


def test_derived_bucket_keys_are_stable_and_valid():
    key = derive_bucket_key("Run 7: ☀ warm-up")
    assert key == derive_bucket_key("Run 7: ☀ warm-up")
    assert key != derive_bucket_key("Run 7 warm up")
    assert key.startswith("Run_7_warm_up_") and all(c.isalnum() or c == "_" for c in key)


@pytest.mark.parametrize("key", ["temp\nX-Evil: 1", "温度", "a b", "a:b", ""])
def test_bucket_keys_that_cannot_travel_in_a_header_are_refused(key):
    from isstreamer_jupyter._config import check_bucket

    with pytest.raises(ConfigError, match="cannot be used"):
        check_bucket("name", key)


# ------------------------------------------------------------------ ranges
SECRET = "ik_S3CRET_config_key_51d0"


def streamer_with(*args, **kwargs):
    """A Streamer that can go nowhere (a fake transport, no spool), closed again at once
    if the settings were accepted."""
    from isstreamer_jupyter import Streamer
    from isstreamer_jupyter.testing import FakeTransport

    streamer = Streamer(*args, transport=FakeTransport(), spool=False, **kwargs)
    streamer.close(timeout=5)
    return streamer


@pytest.fixture
def with_key(folders, monkeypatch):
    monkeypatch.setenv("IS_ACCESS_KEY", SECRET)


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ((), {"debug_level": 9}, "debug_level = 9 from keyword argument: expected a whole "
                                 "number from 0 to 3"),
        (("b", "", "", None, 4), {}, "debug_level = 4 from keyword argument: "),  # positional
        ((), {"debug_level": -4}, "from 0 to 3"),
        ((), {"batch_size": 0}, "batch_size = 0 from keyword argument: expected a whole number "
                                "at least 1"),
        ((), {"buffer_size": 0}, "batch_size = 0 from keyword argument buffer_size: expected "
                                 "a whole number at least 1"),
        (("b", "", "", None, 0, 0), {}, "keyword argument buffer_size"),  # ISStreamer's place
        ((), {"max_queue": 0}, "max_queue = 0 from keyword argument"),
    ],
)
def test_out_of_range_keywords_are_refused_with_the_range_and_the_fix(with_key, args, kwargs,
                                                                       words):
    with pytest.raises(ConfigError) as info:
        streamer_with(*args, **kwargs)
    message = str(info.value)
    assert words in message
    assert "Fix: change it, or leave it out for the default" in message
    assert SECRET not in message


def test_a_blank_bucket_name_is_refused_not_replaced(with_key, monkeypatch):
    """A name of blank space became the default bucket's (a keyword), or a bucket named '  '
    (set_bucket). "" stays ISStreamer's "no name given": the default bucket."""
    from isstreamer_jupyter import Streamer
    from isstreamer_jupyter.testing import FakeTransport

    with pytest.raises(ConfigError) as info:
        streamer_with(bucket_name="  ")
    assert str(info.value) == ("bucket_name = '  ' from keyword argument: expected a name, not "
                               "blank space. Fix: change it, or leave it out for the default "
                               "('isstreamer_jupyter')")
    with pytest.raises(ConfigError, match=re.escape(r"bucket_name = '\t' from keyword argument")):
        streamer_with(bucket="\t")
    monkeypatch.setenv("IS_BUCKET_NAME", " ")
    with pytest.raises(ConfigError, match=re.escape(
            "from environment variable IS_BUCKET_NAME: expected a name, not blank space. Fix: "
            "change IS_BUCKET_NAME")):
        streamer_with()
    monkeypatch.delenv("IS_BUCKET_NAME")
    assert streamer_with(bucket_name="").BucketName == "isstreamer_jupyter"

    s = Streamer(bucket_name="Lab", transport=FakeTransport(), spool=False)
    try:
        for blank in ("  ", "\n"):
            with pytest.raises(ConfigError) as info:
                s.set_bucket(bucket_name=blank)
            assert str(info.value) == (f"bucket name {blank!r} is blank: give the bucket a "
                                       f"name, such as 'Run 7'")
            assert s.BucketName == "Lab"
        s.set_bucket("")  # (ISStreamer's set_bucket(): the default bucket)
        assert s.BucketName == "isstreamer_jupyter"
    finally:
        s.close(timeout=5)



KEY_RULE = ("expected printable ASCII without spaces, :, \" or ' (letters, digits and "
            "underscores are safe)")


def test_a_bad_bucket_key_or_name_from_a_setting_names_its_source_and_the_fix(with_key,
                                                                                monkeypatch):
    """'bucket key 'a b' cannot be used' did not say where it came from (IS_BUCKET_KEY, an
    ini line), as a blank bucket name does."""
    monkeypatch.setenv("IS_BUCKET_KEY", "a b")
    with pytest.raises(ConfigError) as info:
        streamer_with()
    assert str(info.value) == (f"bucket_key = 'a b' from environment variable IS_BUCKET_KEY: "
                               f"{KEY_RULE}. Fix: change IS_BUCKET_KEY, or unset it for the "
                               f"default (derived from the name)")
    monkeypatch.delenv("IS_BUCKET_KEY")
    monkeypatch.setenv("IS_BUCKET_NAME", "n" * 251)
    with pytest.raises(ConfigError, match=re.escape(
            "from environment variable IS_BUCKET_NAME: expected at most 250 characters (the "
            "service's limit), not 251. Fix: change IS_BUCKET_NAME")):
        streamer_with()
    monkeypatch.delenv("IS_BUCKET_NAME")
    write_ini(Path.cwd(), "bucket_key = a:b\n")
    with pytest.raises(ConfigError) as info:
        streamer_with()
    assert (f"bucket_key = 'a:b' from {Path.cwd() / 'isstreamer.ini'} [isstreamer.client_config] "
            f"bucket_key: {KEY_RULE}. Fix: change that line, or remove it" in str(info.value))
    with pytest.raises(ConfigError) as info:
        streamer_with(bucket_key="k" * 251)
    assert str(info.value).startswith(  # (the value's start, not its 251 characters)
        f"bucket_key = '{'k' * 59}… (251 characters) from keyword argument: expected at most "
        f"250 characters (the service's limit), not 251. Fix: change it, or leave it out")
    assert SECRET not in str(info.value)


def test_a_front_end_names_its_own_options_as_the_source(folders, monkeypatch):
    """A front end (the command line, the magics) gives settings as keywords: the source
    said is what its user typed; a label for a setting it did not give changes nothing."""
    monkeypatch.setenv("IS_DEBUG_LEVEL", "2")
    given_as = {"batch_size": "--batch-size", "debug_level": "--debug", "offline": "--online"}
    s = resolve({"batch_size": 5, "timeout": 2, "offline": True}, given_as=given_as)
    assert (s.sources["batch_size"], s.sources["timeout"], s.sources["debug_level"]) == (
        "--batch-size", "keyword argument", "environment variable IS_DEBUG_LEVEL")
    assert s.offline_reason == "offline mode is on (--online)"
    with pytest.raises(ConfigError) as info:
        resolve({"batch_size": "0"}, given_as=given_as)
    assert str(info.value) == ("batch_size = '0' from --batch-size: expected a whole number at "
                               "least 1. Fix: change it, or leave it out for the default (10)")
    with pytest.raises(ConfigError, match=r"^spool = 1 from --spool: expected True or False"):
        resolve({"spool": 1}, given_as={"spool": "--spool"})  # (typed as keywords are)


def test_out_of_range_environment_is_refused_with_the_fix(with_key, monkeypatch):
    monkeypatch.setenv("IS_DEBUG_LEVEL", "9")
    with pytest.raises(ConfigError) as info:
        resolve({})
    assert ("debug_level = '9' from environment variable IS_DEBUG_LEVEL: expected a whole "
            "number from 0 to 3. Fix: change IS_DEBUG_LEVEL, or unset it for the default (0)"
            in str(info.value))
    assert SECRET not in str(info.value)


def test_out_of_range_ini_value_names_the_file_and_the_fix(folders):
    _, work = folders
    write_ini(work, f"access_key = {SECRET}\ndebug_level = 9\n")
    with pytest.raises(ConfigError) as info:
        resolve({})
    message = str(info.value)
    assert "isstreamer.ini [isstreamer.client_config] debug_level: expected a whole number " \
           "from 0 to 3. Fix: change that line, or remove it for the default" in message
    assert SECRET not in message


@pytest.mark.parametrize(("url", "reason"), [
    ("http://[::1:bad/api", "expected a valid host: a name, an IPv4 address, or an IPv6 "
                            "address in brackets"),
    ("http://[zz]/api", "expected a valid host"),
    ("http://127.0.0.1:99999/api", "expected a port from 1 to 65535"),
    ("http://127.0.0.1:0/api", "expected a port from 1 to 65535"),
    ("http://h:port/api", "expected a port from 1 to 65535"),
    ("http://exa mple.com/api", "expected a URL without spaces or control characters"),
    ("http://exa\tmple.com/api", "expected a URL without spaces or control characters"),
    ("http://:8080/api", "expected a host after http:// or https://"),
])
def test_an_api_base_no_request_could_go_to_is_refused_from_each_source(with_key, monkeypatch,
                                                                         url, reason):
    """A broken [IPv6] address raised requests' ValueError from inside Streamer(); a port past
    65535 or a space was taken, then retried forever as 'network error: Failed to parse'."""
    with pytest.raises(ConfigError) as info:
        streamer_with(api_base=url)
    assert str(info.value).startswith(f"api_base = {url!r} from keyword argument: {reason}")
    assert "Fix: change it, or leave it out for the default (https://groker.init.st/api)" in \
        str(info.value)
    monkeypatch.setenv("IS_API_BASE", url)
    with pytest.raises(ConfigError) as info:
        streamer_with()
    assert f"from environment variable IS_API_BASE: {reason}" in str(info.value)
    assert "Fix: change IS_API_BASE, or unset it" in str(info.value)
    monkeypatch.delenv("IS_API_BASE")
    write_ini(Path.cwd(), api=f"stream_api_base = {url}\n")
    with pytest.raises(ConfigError) as info:
        streamer_with()
    assert (f"isstreamer.ini [isstreamer.api_config] stream_api_base: {reason}"
            in str(info.value))
    assert "Fix: change that line, or remove it" in str(info.value)
    assert SECRET not in str(info.value)


def test_api_base_forms_that_work_are_kept(folders):
    for url, kept in (("http://[::1]:8080/api", "http://[::1]:8080/api"),
                      ("http://127.0.0.1:1", "http://127.0.0.1:1/api"),
                      ("https://h:65535/api/", "https://h:65535/api")):
        assert resolve({"api_base": url}).api_base == kept

def test_zero_batch_size_and_buffer_size_are_refused_not_replaced(with_key):
    """ISStreamer 2.0.0 with buffer_size=0 posted an empty batch at every log() and sent the
    events only at flush(): nothing to keep. 0 was silently the default (10) here."""
    for kwargs in ({"batch_size": 0}, {"buffer_size": 0}, {"batch_size": 0, "buffer_size": 5}):
        with pytest.raises(ConfigError, match=r"at least 1|one setting"):
            streamer_with(**kwargs)
    assert streamer_with(buffer_size=3).BufferSize == 3
    assert streamer_with(batch_size=4, buffer_size=4).BufferSize == 4


# ------------------------------------------------------------------ ini sections
@pytest.mark.parametrize(("section", "real"), [
    ("client_config", "isstreamer.client_config"),
    ("api_config", "isstreamer.api_config"),
    ("Isstreamer.Client_Config", "isstreamer.client_config"),
    ("isstreamer", "isstreamer.client_config"),
])
def test_a_section_like_ours_is_not_read_and_said_once_with_the_fix(folders, section, real):
    """ISStreamer read only [isstreamer.client_config] and [isstreamer.api_config]; a file
    with [client_config] was silently ignored (and the user recorded locally). Still not
    read (the same file means the same thing to both clients), but said, without values."""
    from isstreamer_jupyter import IsStreamerWarning

    _, work = folders
    ini = work / "isstreamer.ini"
    ini.write_text(f"[{section}]\naccess_key = {SECRET}\nstream_api_base = http://h:1\n")
    with pytest.warns(IsStreamerWarning) as caught:
        settings = resolve({})
    assert settings.access_key == "" and settings.offline  # not read, as ISStreamer
    assert settings.api_base == "https://groker.init.st/api"
    [warning] = caught
    message = str(warning.message)
    assert f"{ini}: section [{section}] is not read" in message
    assert f"rename it to [{real}]" in message
    assert SECRET not in message and "h:1" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve({})  # said once


def test_our_own_sections_and_others_are_not_warned_about(folders):
    _, work = folders
    write_ini(work, "access_key = abc\n", "stream_api_base = http://h:1")
    (work / "isstreamer.ini").write_text((work / "isstreamer.ini").read_text()
                                         + "\n[my_tool]\nx = 1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve({}).access_key == "abc"


@pytest.mark.parametrize(("text", "said"), [
    (f"access_key = {SECRET}\n",
     "line 1 comes before any [section] line: put [isstreamer.client_config] above it"),
    (f"[isstreamer.client_config\naccess_key = {SECRET}\n",
     "line 1 is a [section] line without its closing ']': end it with ], as in "
     "[isstreamer.client_config]"),
    (f"[isstreamer.client_config]\naccess_key = {SECRET}\n[isstreamer.api_config\r\n"
     "stream_api_base = http://h:1\n",
     "line 3 is a [section] line without its closing ']': end it with ], as in "
     "[isstreamer.client_config]"),
    (f"[isstreamer.client_config]\naccess_key {SECRET}\ndebug_level 2\n",
     "line 2, 3 is not 'name = value' (is the '=' missing?): fix or remove them"),
    (f"[isstreamer.client_config]\naccess_key = {SECRET}\naccess_key = {SECRET}x\n",
     "line 3: access_key is set twice in [isstreamer.client_config]: keep one"),
    (f"[isstreamer.client_config]\naccess_key = {SECRET}\n[isstreamer.client_config]\n",
     "line 3: section [isstreamer.client_config] is there twice: keep one"),
])
def test_a_broken_ini_file_is_said_by_line_number_never_by_its_text(folders, text, said):
    """configparser's messages quote the broken line: the access key's, as often as not."""
    _, work = folders
    (work / "isstreamer.ini").write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve({})
    assert str(info.value) == f"{work / 'isstreamer.ini'} is not a valid ini file: {said}"
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert info.value.__context__ is None  # (configparser's error quotes the line)


@pytest.mark.parametrize(("kwargs", "env", "source"), [
    ({"offline": False}, {}, "keyword argument"),
    ({}, {"IS_OFFLINE": "0"}, "environment variable IS_OFFLINE"),
])
def test_offline_off_with_no_access_key_is_said_at_once(folders, monkeypatch, kwargs, env,
                                                        source):
    """It went on to send with no key: every request got 401, said as 'the service refused
    the access key', and nothing was recorded either."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        resolve(kwargs)
    assert str(info.value).startswith(f"offline = False ({source}) but there is no access key")
    assert "Fix: set IS_ACCESS_KEY" in str(info.value)


def test_an_ini_file_that_is_not_utf8_is_said_in_one_line_without_its_text(folders):
    """A Latin-1 comment (café, from a Windows editor) raised UnicodeDecodeError, whose
    repr, shown by verbose tracebacks, held the whole file: the access key with it."""
    _, work = folders
    comments = "".join(f"# line {n}, a long comment to pass 8 KB of text\n" for n in range(3, 400))
    (work / "isstreamer.ini").write_bytes(
        f"[isstreamer.client_config]\naccess_key = {SECRET}\n{comments}# caf\xe9 sensor\n"
        .encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        resolve({})
    assert str(info.value) == (f"{work / 'isstreamer.ini'} is not UTF-8 text (line 400 has a "
                               f"byte that is not): save it as UTF-8")
    assert info.value.__context__ is None  # (its repr held the whole file)
