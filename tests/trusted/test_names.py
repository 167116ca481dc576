"""Point names and globs: the grammar of docs/DATA-MODEL.md and the glob semantics of RBAC."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smx.names import (
    MAX_NAME_LENGTH,
    Glob,
    GlobSet,
    InvalidName,
    substitute,
    validate_point_name,
)

# --------------------------------------------------------------------------- point names


@pytest.mark.parametrize(
    "name",
    [
        "smm/P",
        "smm/f",
        "ev1/I_max_set",
        "fronius/P_ESS_set",
        "core/uptime.s",
        "a/B",
        "er/Ap_T1",
        "usm1/ess/P",
        "a-b_c/x",
        "site2/usm1/ess/P",
        "a/b/c/d/P",  # four device segments: the maximum
        "d" + "x" * 31 + "/" + "P" * 64,  # device and point at their maximum length
    ],
)
def test_valid_names(name: str) -> None:
    assert validate_point_name(name) == name
    assert validate_point_name(name) == name  # second call: from the cache, same answer


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("", "empty"),
        ("smm", "no device"),
        ("P", "no device"),
        ("/P", "empty segment"),
        ("smm/", "empty segment"),
        ("smm//P", "empty segment"),
        ("a/b/c/d/e/P", "5 device segments, at most 4"),
        ("Smm/P", "device 'Smm'"),
        ("1smm/P", "device '1smm'"),
        ("sm.m/P", "device 'sm.m'"),
        ("smm/1P", "point '1P'"),
        ("smm/P-1", "point 'P-1'"),
        ("smm/P set", "point 'P set'"),
        ("smm/*", "point '*'"),
        ("smm/P\n", "point 'P\\n'"),
        ("smm/P\u00e9", "point"),
        ("sm\u0131/P", "device"),  # dotless i: not ASCII a-z
        ("usm1/Ess/P", "device 'Ess'"),
        ("d" + "x" * 32 + "/P", "device"),  # 33 chars
        ("smm/" + "P" * 65, "point"),
        ("a/" * 200 + "P", "characters long"),
    ],
)
def test_invalid_names_say_which_part(name: str, hint: str) -> None:
    with pytest.raises(InvalidName, match="invalid point name") as info:
        validate_point_name(name)
    assert hint in str(info.value)


def test_non_string_name_is_invalid_name() -> None:
    for value in (None, 3, b"smm/P", ["smm/P"]):
        with pytest.raises(InvalidName, match="must be a string"):
            validate_point_name(value)  # type: ignore[arg-type]


def test_invalid_names_are_not_cached_as_valid() -> None:
    for _ in range(3):
        with pytest.raises(InvalidName):
            validate_point_name("Smm/P")


_DEVICE = st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)
_POINT = st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,63}", fullmatch=True)
_NAMES = st.builds(
    lambda devices, point: "/".join([*devices, point]),
    st.lists(_DEVICE, min_size=1, max_size=4),
    _POINT,
)


@given(_NAMES)
def test_names_from_the_grammar_always_validate(name: str) -> None:
    assert validate_point_name(name) == name


@given(st.text(max_size=300) | st.text(alphabet="aZ9_-./ *", max_size=40))
def test_random_text_raises_only_invalid_name(text: str) -> None:
    try:
        assert validate_point_name(text) == text
    except InvalidName as err:
        assert "invalid point name" in str(err)


# --------------------------------------------------------------------------- glob semantics

GLOB_TABLE: list[tuple[str, str, bool]] = [
    # exact
    ("smm/P", "smm/P", True),
    ("smm/P", "smm/Q", False),
    ("smm/P", "smm/p", False),  # case-sensitive
    ("smm/P", "usm1/smm/P", False),
    # `*` within one segment
    ("smm/*", "smm/P", True),
    ("smm/*", "smm/Ap_T1", True),
    ("smm/*", "usm1/smm/P", False),
    ("smm/*", "smm/x/P", False),
    ("*/P", "smm/P", True),
    ("*/P", "usm1/ess/P", False),
    ("*/*", "ev1/SoC", True),
    ("*/*", "usm1/ess/P", False),
    ("fronius/*_set", "fronius/P_ESS_set", True),
    ("fronius/*_set", "fronius/P_ESS", False),
    ("fronius/*_set", "fronius/_set", True),  # not a valid name, but `*` may be empty
    ("*/*_set", "ev1/I_max_set", True),
    ("*/*_set", "usm1/ev1/I_max_set", False),
    ("ev*/*", "ev1/P", True),
    ("ev*/*", "ev/P", True),  # `*` matches the empty run
    ("ev*/*", "evse2/SoC", True),
    ("ev*/*", "ess/P", False),
    ("ev*/*", "usm1/ev1/P", False),
    ("*ss/P", "ess/P", True),
    ("e*s/P", "ess/P", True),
    ("e*s/P", "es/P", True),
    ("e*s/P", "e/P", False),
    ("smm/P*", "smm/P1", True),
    ("smm/P*", "smm/Q1", False),
    ("smm/*1", "smm/P1", True),
    ("smm/*_T*", "smm/Ap_T1", True),
    ("smm/*_T*", "smm/Ap", False),
    ("smm/P.x", "smm/P.x", True),
    ("smm/P.x", "smm/Pax", False),  # `.` is literal, not a regex wildcard
    # `**`: one or more whole segments
    ("**", "smm/P", True),
    ("**", "usm1/ess/P", True),
    ("**", "a/b/c/d/P", True),
    ("smm/**", "smm/P", True),
    ("smm/**", "smm/x/P", True),
    ("smm/**", "usm1/smm/P", False),
    ("smm/**", "smmx/P", False),
    ("**/P", "smm/P", True),
    ("**/P", "usm1/ess/P", True),
    ("**/P", "smm/Q", False),
    ("**/P", "smm/PP", False),
    ("**/*_set", "ev1/I_max_set", True),
    ("**/*_set", "usm1/ess/P_set", True),
    ("**/*_set", "usm1/ess/P", False),
    ("usm*/**", "usm1/ess/P", True),
    ("usm*/**", "usm12/P", True),
    ("usm*/**", "smm/P", False),
    ("usm1/**/P", "usm1/ess/P", True),
    ("usm1/**/P", "usm1/a/b/P", True),
    ("usm1/**/P", "usm1/P", False),  # `**` never matches zero segments
    ("**/ess/**", "usm1/ess/P", True),
    ("**/ess/**", "ess/P", False),
    ("**/**", "smm/P", True),
    ("**/**", "a/b/c", True),
    ("**/**/**", "smm/P", False),  # three `**` need at least three segments
    ("**/**/**", "a/b/P", True),
    ("*/**", "smm/P", True),
    ("*/**", "usm1/ess/P", True),
    ("**/*", "usm1/ess/P", True),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GLOB_TABLE)
def test_glob_table(pattern: str, name: str, expected: bool) -> None:
    assert Glob(pattern).match(name) is expected
    assert GlobSet([pattern]).match(name) is expected


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        ("", "empty"),
        ("smm//P", "empty segment 2"),
        ("/smm", "empty segment 1"),
        ("smm/", "empty segment 2"),
        ("a**b", "'**' must be a whole segment"),
        ("smm/P**", "'**' must be a whole segment"),
        ("***", "'**' must be a whole segment"),
        ("smm/P?", "outside the name grammar"),
        ("smm/[PQ]", "outside the name grammar"),
        ("smm/P Q", "outside the name grammar"),
        ("smm/é", "outside the name grammar"),
        ("smm/{name}", "outside the name grammar"),
        ("a/b/c/d/e/f", "at most 5"),
        ("smm/" + "P" * 252, "at most 255"),
    ],
)
def test_invalid_patterns(pattern: str, hint: str) -> None:
    with pytest.raises(InvalidName, match="invalid pattern") as info:
        Glob(pattern)
    assert hint in str(info.value)
    with pytest.raises(InvalidName):
        GlobSet(["smm/P", pattern])


def test_non_string_pattern() -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        Glob(["smm/P"])  # type: ignore[arg-type]


def test_glob_equality_and_hash_by_pattern() -> None:
    assert Glob("smm/*") == Glob("smm/*")
    assert hash(Glob("smm/*")) == hash(Glob("smm/*"))
    assert Glob("smm/*") != Glob("smm/**")
    assert len({Glob("smm/*"), Glob("smm/*"), Glob("**")}) == 2
    assert Glob("smm/*").pattern == "smm/*"
    assert repr(Glob("smm/*")) == "Glob('smm/*')"


def test_match_refuses_overlong_input() -> None:
    glob = Glob("**")
    assert glob.match("a/" + "b" * (MAX_NAME_LENGTH - 2))
    assert not glob.match("a/" + "b" * MAX_NAME_LENGTH)


def test_globset() -> None:
    empty = GlobSet()
    assert not empty and len(empty) == 0
    assert not empty.match("smm/P")
    assert not GlobSet([]).match("anything/at_all")

    globs = GlobSet(["smm/*", "ev*/*", Glob("usm*/**"), "smm/*"])
    assert globs.patterns == ("smm/*", "ev*/*", "usm*/**")  # deduplicated, order kept
    assert len(globs) == 3 and bool(globs)
    assert globs.match("smm/P")
    assert globs.match("ev1/SoC")
    assert globs.match("usm1/ess/P")
    assert not globs.match("ess/P")
    assert not globs.match("core/uptime")
    assert GlobSet(["ev*/*", "smm/*"]) == GlobSet(["smm/*", "ev*/*"])
    assert hash(GlobSet(["ev*/*", "smm/*"])) == hash(GlobSet(["smm/*", "ev*/*"]))
    assert [g.pattern for g in globs] == ["smm/*", "ev*/*", "usm*/**"]


def test_globset_alternation_is_anchored_per_pattern() -> None:
    # `smm/P` must not match as a prefix of `smm/PP` just because another alternative exists.
    globs = GlobSet(["smm/P", "ess/*"])
    assert not globs.match("smm/PP")
    assert not globs.match("xsmm/P")
    assert globs.match("ess/PP")


# --------------------------------------------------------------------------- naive reference


def _segment_match(pattern: str, text: str) -> bool:
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(_segment_match(pattern[1:], text[k:]) for k in range(len(text) + 1))
    return bool(text) and pattern[0] == text[0] and _segment_match(pattern[1:], text[1:])


def _naive_match(pattern: list[str], name: list[str]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_naive_match(rest, name[k:]) for k in range(1, len(name) + 1))
    return bool(name) and _segment_match(head, name[0]) and _naive_match(rest, name[1:])


_NAME_SEGMENTS = st.sampled_from(
    ["smm", "ess", "ev1", "ev", "usm1", "P", "P_set", "Ap_T1", "a", "ab", "b", "ba", "a.b"]
)
_PATTERN_SEGMENTS = st.sampled_from(
    ["*", "**", "smm", "ev*", "*_set", "P", "a*", "*b", "usm*", "*s*", "a", "P_*", "*.*", "a*b*"]
) | st.text(alphabet="ab*", min_size=1, max_size=4).filter(lambda s: "**" not in s)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_PATTERN_SEGMENTS, min_size=1, max_size=5),
    st.lists(
        _NAME_SEGMENTS | st.text(alphabet="ab", min_size=1, max_size=4), min_size=1, max_size=5
    ),
)
def test_glob_agrees_with_naive_matcher(pattern: list[str], name: list[str]) -> None:
    text, target = "/".join(pattern), "/".join(name)
    expected = _naive_match(pattern, name)
    assert Glob(text).match(target) is expected
    assert GlobSet([text, "zzz/zzz"]).match(target) is expected


@settings(max_examples=200)
@given(st.lists(st.lists(_PATTERN_SEGMENTS, min_size=1, max_size=5), max_size=4), _NAMES)
def test_globset_is_any_of_its_globs(patterns: list[list[str]], name: str) -> None:
    texts = ["/".join(p) for p in patterns]
    assert GlobSet(texts).match(name) is any(Glob(t).match(name) for t in texts)


@given(st.text(max_size=60) | st.text(alphabet="a*/_.Z9-? ", max_size=20))
def test_random_patterns_raise_only_invalid_name(text: str) -> None:
    try:
        glob = Glob(text)
    except InvalidName:
        return
    glob.match("smm/P")


# --------------------------------------------------------------------------- substitute


def test_substitute() -> None:
    assert substitute("{name}/**", name="fronius") == "fronius/**"
    assert substitute("{site}/{name}/*", name="ev1", site="usm-0017") == "usm-0017/ev1/*"
    assert substitute("smm/*", name="x") == "smm/*"


@pytest.mark.parametrize(
    ("pattern", "params", "hint"),
    [
        ("{nmae}/**", {"name": "a"}, "unknown placeholder {nmae}"),
        ("{name/**", {"name": "a"}, "unbalanced brace"),
        ("name}/**", {"name": "a"}, "unbalanced brace"),
        ("{name}/**", {"name": "*"}, "must be a non-empty string"),
        ("{name}/**", {"name": "a/b"}, "must be a non-empty string"),
        ("{name}/**", {"name": ""}, "must be a non-empty string"),
    ],
)
def test_substitute_errors(pattern: str, params: dict[str, str], hint: str) -> None:
    with pytest.raises(InvalidName) as info:
        substitute(pattern, **params)
    assert hint in str(info.value)


# --------------------------------------------------------------------------- speed


def test_validate_and_match_speed() -> None:
    names = [f"dev{i % 50}/P{i}" for i in range(2000)]
    for name in names:
        validate_point_name(name)
    n = 100_000
    start = time.perf_counter()
    for i in range(n):
        validate_point_name(names[i % 2000])
    cached = n / (time.perf_counter() - start)
    glob = GlobSet(["smm/*", "ess/*", "ev*/*", "pv/*", "fronius/*", "usm*/**"])
    start = time.perf_counter()
    for i in range(n):
        glob.match(names[i % 2000])
    matched = n / (time.perf_counter() - start)
    print(
        f"\nvalidate_point_name cached: {cached:,.0f}/s; 6-pattern GlobSet.match: {matched:,.0f}/s"
    )
    assert cached > 50_000  # the core's write rate, with a wide margin on slow CI


def test_many_stars_on_an_almost_matching_name_take_linear_time():
    # `*a*a*...*b` against `aaaa...` backtracked exponentially with a naive regex: a reader
    # could freeze the core's event loop with one watch pattern.
    import time

    name = "meter/" + "a" * 60
    for pattern in ("**/" + "*a" * 40 + "*b", "meter/" + "*a" * 50 + "*b", "*a" * 20 + "*/**"):
        glob = Glob(pattern)
        t0 = time.perf_counter()
        assert not glob.match(name)
        assert time.perf_counter() - t0 < 0.2, pattern  # was minutes; now microseconds
    assert Glob("meter/" + "*a" * 20 + "*").match(name)
