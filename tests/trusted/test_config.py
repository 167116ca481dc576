"""The core's TOML config: defaults, every key, and errors that name the file and the key."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smx.settings import parse_duration_option
from trusted.core.config import (
    ConfigError,
    CoreConfig,
    HistoryConfig,
    load_core_config,
    parse_duration,
    parse_size,
)

FULL = """\
site = "usm-0017"
socket = "run/core.sock"
tcp = "127.0.0.1:7443"
policy = "/etc/smx/policy.toml"
pki_dir = "certs"

[history]
path = "db/history.db"
flush_interval = "500ms"
max_age = "7d"
max_size = "1.5GB"
retention_interval = "5m"

[audit]
path = "log/audit.jsonl"

[watch]
backlog = 5000
stale_factor = 3
stale_check_interval = "250ms"
min_interval = "2ms"

[limits]
max_request_items = 500
max_message_bytes = "8MB"
"""


def write(tmp_path: Path, text: str, name: str = "core.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> CoreConfig:
    return load_core_config(write(tmp_path, text), home=tmp_path / "site")


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    return str(exc.value)


# -- values ----------------------------------------------------------------------------------


def test_no_file_gives_every_default_under_home(tmp_path: Path) -> None:
    home = tmp_path / "site"
    cfg = load_core_config(None, home=home)
    assert cfg == CoreConfig(
        site="",
        home=home,
        socket=home / "core.sock",
        tcp=None,
        pki_dir=home / "pki",
        policy=home / "policy.toml",
        audit_path=home / "data" / "audit.jsonl",
        history=HistoryConfig(
            path=home / "data" / "history.db",
            flush_interval=2.0,
            max_age_s=30 * 86400,
            max_bytes=2 * 1024**3,
            retention_interval=60.0,
        ),
        stale_factor=2.0,
        stale_check_interval=0.5,
        watch_backlog=20_000,
        max_request_items=10_000,
        max_message_bytes=4 * 1024**2,
    )


def test_an_empty_file_equals_the_defaults(tmp_path: Path) -> None:
    home = tmp_path / "site"
    assert load_text(tmp_path, "") == load_core_config(None, home=home)


def test_every_key_is_parsed_and_relative_paths_resolve_against_home(tmp_path: Path) -> None:
    home = tmp_path / "site"
    cfg = load_text(tmp_path, FULL)
    assert cfg.site == "usm-0017"
    assert cfg.home == home
    assert cfg.socket == home / "run" / "core.sock"
    assert cfg.tcp == "127.0.0.1:7443"
    assert cfg.policy == Path("/etc/smx/policy.toml")  # absolute stays absolute
    assert cfg.pki_dir == home / "certs"
    assert cfg.audit_path == home / "log" / "audit.jsonl"
    assert cfg.history == HistoryConfig(
        path=home / "db" / "history.db",
        flush_interval=0.5,
        max_age_s=7 * 86400,
        max_bytes=int(1.5 * 1024**3),
        retention_interval=300.0,
    )
    assert cfg.watch_backlog == 5000
    assert cfg.stale_factor == 3.0 and isinstance(cfg.stale_factor, float)
    assert cfg.stale_check_interval == 0.25
    assert cfg.watch_min_interval == 0.002
    assert cfg.max_request_items == 500
    assert cfg.max_message_bytes == 8 * 1024**2


def test_plain_numbers_are_seconds_and_bytes(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "[history]\nflush_interval = 0.2\nmax_age = 3600\nmax_size = 10485760\n"
        "[limits]\nmax_message_bytes = 1048576\n",
    )
    assert cfg.history.flush_interval == 0.2
    assert cfg.history.max_age_s == 3600.0
    assert cfg.history.max_bytes == 10 * 1024**2
    assert cfg.max_message_bytes == 1024**2


def test_retention_limits_can_be_turned_off(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, '[history]\nmax_age = "off"\nmax_size = "OFF"\n')
    assert cfg.history.max_age_s is None and cfg.history.max_bytes is None


def test_ipv6_tcp_listener(tmp_path: Path) -> None:
    assert load_text(tmp_path, 'tcp = "[::1]:7443"').tcp == "[::1]:7443"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("30d", 30 * 86400.0),
        ("1.5h", 5400.0),
        (" 10 s ", 10.0),
        (3, 3.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


def test_on_the_command_line_a_plain_number_is_seconds() -> None:
    # In TOML "5" (a string) is refused, as it likely lost its unit; a command line has only
    # strings, and the error said "a plain number is seconds".
    assert [parse_duration_option(t, "--wait") for t in ("5", " 1.5 ", "2m", "0")] == [
        5.0,
        1.5,
        120.0,
        0.0,
    ]
    for bad in ("-1", "nan", "inf", "1e3", "5 sec", ""):
        with pytest.raises(ConfigError, match=r'^--wait: expected a duration like "30d"'):
            parse_duration_option(bad, "--wait")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512KB", 512 * 1024),
        ("2GB", 2 * 1024**3),
        ("1.5MB", 1536 * 1024),
        ("4mb", 4 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("100B", 100),
        ("1TB", 1024**4),
        (4096, 4096),
    ],
)
def test_parse_size_is_1024_based(text: object, size: int) -> None:
    assert parse_size(text, "k") == size


@pytest.mark.parametrize(
    "value", ["", "5", "5 sec", "-1s", "1e3s", "5M", "s", "1.s", True, None, [1], -1.0, math.nan]
)
def test_bad_durations_name_the_key_and_the_value(value: object) -> None:
    with pytest.raises(ConfigError, match=r'^history\.max_age: expected a duration like "30d"'):
        parse_duration(value, "history.max_age")


@pytest.mark.parametrize("value", ["", "12", "2 GBs", "-1KB", "iB", "1e3KB", 1.5, -1, True, {}])
def test_bad_sizes_name_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=r'^history\.max_size: expected a size like "2GB"'):
        parse_size(value, "history.max_size")


def test_billing_snapshots_are_kept_by_default_and_keep_is_checked(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").history.keep == ("**/*.bill*",)
    assert load_text(tmp_path, '[history]\nkeep = ["smm/**", "x/E"]\n').history.keep == (
        "smm/**",
        "x/E",
    )
    assert load_text(tmp_path, "[history]\nkeep = []\n").history.keep == ()
    assert "history.keep: expected a list" in error_of(tmp_path, '[history]\nkeep = "x"\n')
    assert "history.keep[1]:" in error_of(tmp_path, '[history]\nkeep = ["a/b", "a//b"]\n')


# -- errors ----------------------------------------------------------------------------------


def test_error_names_file_key_and_value(tmp_path: Path) -> None:
    msg = error_of(tmp_path, '[history]\nmax_age = "12"\n')
    assert msg.startswith(f"{tmp_path / 'core.toml'}: history.max_age: expected a duration like")
    assert 'got "12"' in msg


def test_unknown_top_level_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    msg = error_of(tmp_path, 'sokcet = "core.sock"\n')
    assert "core.toml: sokcet: unknown key" in msg
    assert "did you mean 'socket'" in msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[history]\nmax_agee = 1\n", "history.max_agee"),
        ("[watch]\nbacklg = 1\n", "watch.backlg"),
        ("[limits]\nfoo = 1\n", "limits.foo"),
        ("[audit]\nfsync = 1\n", "audit.fsync"),
        ("[extra]\nx = 1\n", "extra"),
    ],
)
def test_unknown_key_in_a_section_is_named(tmp_path: Path, text: str, key: str) -> None:
    msg = error_of(tmp_path, text)
    assert f"core.toml: {key}: unknown key" in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("site = 5", "site: expected a string, got 5"),
        ('site = "Bad Site!"', "site: invalid site id"),
        ("socket = 1", "socket: expected a non-empty path string, got 1"),
        ('policy = ""', "policy: expected a non-empty path string"),
        ("history = 3", "history: expected a table [history], got 3"),
        ('[watch]\nbacklog = "many"', 'watch.backlog: expected an integer, got "many"'),
        ("[watch]\nbacklog = true", "watch.backlog: expected an integer, got true"),
        ("[watch]\nbacklog = 1.5", "watch.backlog: expected an integer, got 1.5"),
        ('[watch]\nstale_factor = "2"', 'watch.stale_factor: expected a number, got "2"'),
        ("[limits]\nmax_request_items = [1]", "limits.max_request_items: expected an integer"),
        ("[history]\npath = {a = 1}", "history.path: expected a non-empty path string, got a"),
        ("tcp = 7443", "tcp: expected a string, got 7443"),
    ],
)
def test_wrong_types_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert f"core.toml: {expected}" in error_of(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[history]\nflush_interval = "10ms"', "history.flush_interval: must be between 50ms and"),
        ('[history]\nflush_interval = "2m"', "history.flush_interval: must be between 50ms and 1m"),
        ('[history]\nmax_age = "10s"', "history.max_age: must be between 1m and"),
        ('[history]\nmax_size = "512KB"', "history.max_size: must be at least 1MB"),
        ("[watch]\nbacklog = 10", "watch.backlog: must be between 100 and"),
        ("[watch]\nstale_factor = 0.5", "watch.stale_factor: must be between 1 and 100"),
        ("[limits]\nmax_request_items = 0", "limits.max_request_items: must be between 1 and"),
        ('[limits]\nmax_message_bytes = "1GB"', "limits.max_message_bytes: must be between 64KB"),
        ('tcp = "127.0.0.1:0"', "tcp: port must be 1..65535"),
        ('tcp = "127.0.0.1:70000"', "tcp: port must be 1..65535"),
        ('tcp = "127.0.0.1:http"', "tcp: port must be 1..65535"),
        ('tcp = "localhost"', 'tcp: expected "host:port"'),
        ('tcp = ":7443"', 'tcp: expected "host:port"'),
        ('tcp = "::1:7443"', "tcp: write an IPv6 address in brackets"),
        ('tcp = "[zz::1]:7443"', "tcp: [zz::1] is not an IPv6 address"),
        ('tcp = "bad host:7443"', 'tcp: "bad host" is not a host name'),
    ],
)
def test_out_of_range_values_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert f"core.toml: {expected}" in error_of(tmp_path, text)


def test_a_socket_path_too_long_for_unix_sockets_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, f'socket = "/tmp/{"s" * 120}.sock"')
    assert "core.toml: socket:" in msg and "108 bytes" in msg
    with pytest.raises(ConfigError, match="108 bytes"):
        load_core_config(None, home=tmp_path / ("h" * 100))


def test_missing_file_invalid_toml_and_non_utf8_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config"):
        load_core_config(tmp_path / "nope.toml", home=tmp_path)
    assert "core.toml: invalid TOML" in error_of(tmp_path, "site = \n")
    bad = tmp_path / "core.toml"
    bad.write_bytes(b'site = "\xff"\n')
    with pytest.raises(ConfigError, match=r"core\.toml: not UTF-8"):
        load_core_config(bad, home=tmp_path)


# -- properties ------------------------------------------------------------------------------

_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.from_regex(r"\s*-?\d{0,20}(\.\d{0,20})?\s*[a-zA-Z]{0,4}\s*", fullmatch=True),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=5,
)


@given(_ANY)
def test_parsers_raise_only_config_error(value: object) -> None:
    for parse in (parse_duration, parse_size):
        try:
            result = parse(value, "k")
        except ConfigError as err:
            assert str(err).startswith("k: ")
        else:
            assert result >= 0


@given(
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=999),
    st.sampled_from(["ms", "s", "m", "h", "d"]),
)
def test_parse_duration_round_trips(whole: int, frac: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert math.isclose(parse_duration(f"{whole}{unit}", "k"), whole * factor, rel_tol=1e-12)
    value = whole + frac / 1000
    assert math.isclose(parse_duration(f"{whole}.{frac:03d}{unit}", "k"), value * factor)
    assert parse_duration(whole, "k") == float(whole)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["B", "KB", "MB", "GB", "TB", "kib", "Mb"]),
    st.integers(min_value=0, max_value=3),
)
def test_parse_size_round_trips(n: int, unit: str, quarters: int) -> None:
    factor = 1024 ** ["b", "k", "m", "g", "t"].index(unit[0].lower() if len(unit) > 1 else "b")
    assert parse_size(f"{n}{unit}", "k") == n * factor
    assert parse_size(n * factor, "k") == n * factor
    # Fractions are exact in decimal and rounded down to whole bytes.
    assert parse_size(f"{n}.{quarters * 25:02d}{unit}", "k") == (4 * n + quarters) * factor // 4


_KEYS = ["site", "socket", "tcp", "policy", "pki_dir", "path", "flush_interval", "max_age",
         "max_size", "retention_interval", "backlog", "stale_factor", "stale_check_interval",
         "max_request_items", "max_message_bytes", "bogus"]  # fmt: skip
_SECTION_NAMES = ["history", "audit", "watch", "limits", "other"]
_SCALAR = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["2s", "30d", "off", "4MB", "127.0.0.1:7443", "usm-1", "x", "", "500ms"])
    | st.text(max_size=20)
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in value) + '"'
    return repr(value)


def _toml(top: dict[str, object], sections: dict[str, dict[str, object]]) -> str:
    out = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for name, table in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.sampled_from(_KEYS), _SCALAR, max_size=4),
    st.dictionaries(
        st.sampled_from(_SECTION_NAMES),
        st.dictionaries(st.sampled_from(_KEYS), _SCALAR, max_size=3),
        max_size=3,
    ),
)
def test_load_on_generated_toml_raises_only_config_error(
    top: dict[str, object], sections: dict[str, dict[str, object]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "core.toml"
        path.write_text(_toml(top, sections))
        try:
            cfg = load_core_config(path, home=Path(tmp))
        except ConfigError as err:
            assert str(err).startswith(f"{path}: ")
        else:
            assert isinstance(cfg, CoreConfig)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_load_on_random_text_raises_only_config_error(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "core.toml"
        if isinstance(text, str):
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(text)
        try:
            load_core_config(path, home=Path(tmp))
        except ConfigError as err:
            assert str(err).startswith(f"{path}: ")


def test_the_settings_not_at_default_are_named_by_their_keys(tmp_path: Path) -> None:
    from trusted.core.config import non_default_settings

    assert non_default_settings(load_text(tmp_path, "")) == []
    cfg = load_text(tmp_path, '[watch]\nmin_interval = 0\n[history]\nflush_interval = "10s"\n')
    assert non_default_settings(cfg) == ["watch.min_interval=0.0", "history.flush_interval=10.0"]
