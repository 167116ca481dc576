"""site.toml for `smx run`: defaults, every key, and errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.smx_run import run_smx
from trusted.supervisor.provision import site_policy_text
from trusted.supervisor.site_config import (
    SiteConfigError,
    load_site_config,
    parse_site_config,
    render_core_toml,
)

ROOT = Path(__file__).resolve().parents[2]

FULL = """\
site = "usm-0017"
home = "state"

[core]
tcp = "127.0.0.1:7443"
[core.history]
flush_interval = "500ms"

[supervisor]
backoff_initial = "250ms"
backoff_max = "10s"
stable_after = "1m"
stop_timeout = 3
health_timeout = "20s"
core_nice = 0

[extensions.meter]
module = "extensions.smm"
devices = ["smm", "pv"]
reads = ["ess/P"]
[extensions.meter.config]
port = "/dev/ttyUSB0"
when = 2025-01-02T03:04:05Z

[extensions.fronius]
command = ["bin/fronius", "--poll", "1s"]
enabled = false

[agents.lessag]
module = "untrusted.planner"
reads = ["smm/P"]

[simulators.meter-sim]
command = ["/usr/bin/env", "sim"]
"""


def write(tmp_path: Path, text: str) -> Path:
    """site.toml in tmp_path, next to the modules x, y and z the examples run (found there as
    in the site home, where a process starts)."""
    path = tmp_path / "site.toml"
    path.write_text(text)
    for name in "xyz":
        (tmp_path / f"{name}.py").write_text("")
    return path


def error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SiteConfigError) as info:
        load_site_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # every error names the file
    return message.removeprefix(f"{path}: ")


def test_full_file(tmp_path):
    cfg = load_site_config(write(tmp_path, FULL))
    assert cfg.site == "usm-0017"
    assert cfg.home == tmp_path / "state"
    assert cfg.core.tcp == "127.0.0.1:7443" and cfg.core.history.flush_interval == 0.5
    assert cfg.core.socket == tmp_path / "state" / "core.sock"
    s = cfg.supervisor
    assert (s.backoff_initial, s.backoff_max, s.stable_after) == (0.25, 10, 60)
    assert (s.stop_timeout, s.health_timeout, s.core_nice) == (3, 20, 0)
    meter, fronius, lessag, sim = cfg.processes
    assert meter.kind == "extension" and meter.domain == "trusted"
    assert meter.devices == ("smm", "pv") and meter.reads == ("ess/P",)
    assert meter.role == "trusted-extension"
    assert meter.config == {"port": "/dev/ttyUSB0", "when": "2025-01-02T03:04:05+00:00"}
    # Supervised Python processes without docstrings and asserts (memory); a simulator plain.
    # -P: its writable working directory is not on its import path.
    assert meter.argv("/py") == ["/py", "-OO", "-P", "-m", "extensions.smm"]
    assert dataclasses.replace(sim, module="s", command=None).argv("/py") == ["/py", "-m", "s"]
    assert fronius.argv("/py") == [str(tmp_path / "bin/fronius"), "--poll", "1s"]
    assert not fronius.enabled
    assert lessag.domain == "untrusted" and lessag.role == "untrusted-agent"
    assert lessag.devices == ("lessag",)
    assert sim.kind == "simulator" and sim.domain is None and sim.command == ("/usr/bin/env", "sim")
    assert [p.name for p in cfg.clients] == ["meter", "lessag"]  # disabled ones left out
    assert [p.name for p in cfg.of_kind("simulator")] == ["meter-sim"]


def test_minimal_file_defaults(tmp_path):
    cfg = load_site_config(write(tmp_path, 'site = "s1"\n'))
    assert cfg.home == tmp_path and cfg.processes == ()
    assert cfg.supervisor.backoff_initial == 1 and cfg.supervisor.backoff_max == 60
    assert cfg.supervisor.stable_after == 30 and cfg.supervisor.stop_timeout == 5
    assert cfg.supervisor.health_timeout == 15
    assert cfg.supervisor.core_nice == -5  # the core first when the CPU is busy
    assert cfg.supervisor.fork_server  # extensions share one pre-imported image
    assert cfg.core.policy == tmp_path / "policy.toml"


def test_core_toml_round_trips_through_the_core_parser(tmp_path):
    cfg = load_site_config(write(tmp_path, FULL))
    text = render_core_toml(cfg.site, cfg.core_table)
    assert 'site = "usm-0017"' in text and "[history]" in text


def test_policy_is_least_privilege(tmp_path):
    from smx.identity import Identity
    from trusted.policy import Policy

    cfg = load_site_config(write(tmp_path, FULL))
    policy = Policy.from_toml(site_policy_text(cfg))
    meter = Identity("usm-0017", "trusted", "meter")
    for point in ("meter/P", "smm/P", "pv/P", "smm/P_set"):
        assert policy.allows(meter, "write", point), point
    assert policy.allows(meter, "control", "pv/P_set")
    assert policy.allows(meter, "read", "ess/P")
    assert not policy.allows(meter, "write", "ess/P")
    assert not policy.allows(meter, "read", "fronius/P")
    fronius = Identity("usm-0017", "trusted", "fronius")  # disabled: no binding
    assert not policy.allows(fronius, "read", "fronius/P")
    lessag = Identity("usm-0017", "untrusted", "lessag")
    assert policy.allows(lessag, "read", "smm/P")
    assert not policy.allows(lessag, "write", "lessag/x")
    assert policy.allows(Identity("usm-0017", "trusted", "admin"), "admin")
    sup = Identity("usm-0017", "trusted", "supervisor")
    assert policy.allows(sup, "read", "smm/P") and not policy.allows(sup, "write", "smm/P")


def test_an_agents_extra_reads_leave_billing_snapshots_out_unless_named(tmp_path):
    from smx.identity import Identity
    from trusted.policy import Policy

    text = (
        'site = "s1"\n'
        '[agents.north]\nmodule = "x"\nreads = ["meter/*", "meter/Ap.bill03"]\n'
        '[extensions.ess]\nmodule = "y"\nreads = ["meter/*"]\n'
    )
    policy = Policy.from_toml(site_policy_text(load_site_config(write(tmp_path, text))))
    north = Identity("s1", "untrusted", "north")
    assert policy.allows(north, "read", "meter/P") and policy.allows(north, "read", "meter/Ap")
    assert not policy.allows(north, "read", "meter/Ap.bill01")
    assert policy.allows(north, "read", "meter/Ap.bill03")  # named in its reads
    ess = Identity("s1", "trusted", "ess")  # a trusted extension reads as written
    assert policy.allows(ess, "read", "meter/Ap.bill01")


def test_role_none_binds_exactly_the_reads_requests_and_writes_listed(tmp_path):
    from smx.identity import Identity
    from trusted.policy import Policy

    text = (
        'site = "s1"\n'
        '[agents.north]\nmodule = "x"\nrole = "none"\nreads = ["meter/*", "ess/P"]\n'
        'requests = ["ess/P_set"]\nwrites = ["north/mqtt"]\n'
        '[agents.plain]\nmodule = "x"\nrequests = ["ess/P_set"]\nwrites = ["plain/queued"]\n'
        '[extensions.ess]\nmodule = "y"\nrole = "none"\ndevices = ["ess", "pv"]\n'
        'requests = ["ev1/I_max_set"]\n'
    )
    cfg = load_site_config(write(tmp_path, text))
    north = next(p for p in cfg.processes if p.name == "north")
    assert north.role == "none" and north.roles == ()
    assert north.requests == ("ess/P_set",) and north.writes == ("north/mqtt",)
    policy = Policy.from_toml(site_policy_text(cfg))
    who = Identity("s1", "untrusted", "north")
    assert policy.roles_for(who) == []
    allowed = [
        ("read", "meter/P"),
        ("read", "ess/P"),
        ("request", "ess/P_set"),
        ("write", "north/mqtt"),
        ("write", "north/ext.state"),  # the SDK's health point, as the default role gives
    ]
    refused = [
        ("read", "meter/Ap.bill01"),  # billing snapshots stay out, as for every agent
        ("read", "ess/SoC"),
        ("read", "pv/P"),  # the default role would read it
        ("request", "ev1/I_max_set"),  # ... and request it
        ("request", "ess/Q_set"),
        ("write", "north/other"),
        ("write", "meter/P"),
        ("control", "ess/P_set"),
    ]
    assert [a for a in allowed if not policy.allows(who, *a)] == []
    assert [r for r in refused if policy.allows(who, *r)] == []
    # With its role, the keys add to it.
    plain = Identity("s1", "untrusted", "plain")
    assert policy.roles_for(plain) == ["untrusted-agent"]
    assert policy.allows(plain, "write", "plain/queued") and policy.allows(plain, "read", "pv/P")
    # An extension without a role: its devices (its own name's too) and its requests.
    ess = Identity("s1", "trusted", "ess")
    assert policy.roles_for(ess) == []
    for verb in ("read", "write", "control"):
        assert policy.allows(ess, verb, "ess/P_set") and policy.allows(ess, verb, "pv/P")
    assert policy.allows(ess, "request", "ev1/I_max_set")
    assert not policy.allows(ess, "read", "meter/P")
    assert not policy.allows(ess, "request", "x/P_set")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('[agents.a]\nmodule = "x"\nrole = "nobody"\n', "unknown role 'nobody'"),
        ('[agents.a]\nmodule = "x"\nrole = "nobody"\n', 'or "none" for exactly'),
        ('[agents.a]\nmodule = "x"\nrequests = "e/P_set"\n', "agents.a.requests: expected an"),
        ('[agents.a]\nmodule = "x"\nrequests = ["e//P_set"]\n', "agents.a.requests[0]:"),
        ('[agents.a]\nmodule = "x"\nwrites = [1]\n', "agents.a.writes[0]: expected a"),
        ('[agents.a]\nmodule = "x"\nwrites = ["a/**", "smm/P"]\n', "agents.a.writes[1]: 'smm/P'"),
        ('[agents.a]\nmodule = "x"\nwrites = ["ab/x"]\n', "is not one of the agent's own"),
        ('[extensions.e]\nmodule = "x"\nwrites = ["e/x"]\n', "extensions.e.writes: an extension"),
        ('[agents.a]\nmodule = "x"\nrequest = ["e/P_set"]\n', "did you mean 'requests'"),
        ('[simulators.a]\nmodule = "x"\nrequests = ["e/P_set"]\n', "simulators.a.requests: unkn"),
    ],
)
def test_role_requests_and_writes_mistakes_are_named(tmp_path, table, expected):
    assert expected in error(tmp_path, 'site = "s"\n' + table)


def test_os_groups_name_existing_groups_that_give_no_root_power(tmp_path):
    ok = 'site = "s1"\n[extensions.m]\nmodule = "x"\nos_groups = ["dialout"]\n'
    assert load_site_config(write(tmp_path, ok)).processes[0].os_groups == ("dialout",)
    for group, message in (
        ("sudo", "extensions.m.os_groups[0]: 'sudo' would give the process root's power"),
        ("no-such-group-x", "extensions.m.os_groups[0]: no OS group named 'no-such-group-x'"),
    ):
        text = f'site = "s1"\n[extensions.m]\nmodule = "x"\nos_groups = ["{group}"]\n'
        with pytest.raises(SiteConfigError, match=re.escape(message)):
            load_site_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('site = "s"\nport = 1\n', "port: unknown key"),
        ('site = "s"\nsupervisor_ = {}\n', "did you mean 'supervisor'"),
        ('site = "s"\n[core]\nsockett = "x"\n', "core.sockett: unknown key"),
        ('site = "s"\n[core.history]\nflush = "1s"\n', "core.history.flush: unknown key"),
        ('site = "s"\n[core]\nsite = "s"\n', "core.site: set the site at the top level"),
        ('site = "s"\n[supervisor]\nbackoff = "1s"\n', "supervisor.backoff: unknown key"),
        (
            'site = "s"\n[extensions.m]\nmodule = "x"\nport = 1\n',
            "extensions.m.port: unknown key",
        ),
        (
            'site = "s"\n[simulators.m]\nmodule = "x"\ndevices = ["m"]\n',
            "simulators.m.devices: unknown key",
        ),
    ],
)
def test_unknown_keys_are_named(tmp_path, text, expected):
    assert expected in error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "site: required"),
        ("site = 3\n", "site: expected a non-empty string, got 3"),
        ('site = "Big Site"\n', "site: invalid site id"),
        ('site = "s"\nhome = 1\n', "home: expected a non-empty string"),
        ('site = "s"\ncore = 1\n', "core: expected a table"),
        ('site = "s"\n[core.history]\nflush_interval = "soon"\n', "core.history.flush_interval"),
        ('site = "s"\n[core]\ntcp = "nohost"\n', "core.tcp"),
        ('site = "s"\n[supervisor]\nstop_timeout = "fast"\n', "supervisor.stop_timeout"),
        ('site = "s"\n[supervisor]\nbackoff_initial = "2h"\n', "supervisor.backoff_initial"),
        (
            'site = "s"\n[supervisor]\nbackoff_initial = "10s"\nbackoff_max = "5s"\n',
            "supervisor.backoff_max: must not be less",
        ),
        ('site = "s"\n[supervisor]\ncore_nice = -21\n', "supervisor.core_nice: a nice value"),
        ('site = "s"\n[supervisor]\ncore_nice = 20\n', "from -20 (first) to 19 (last), got 20"),
        ('site = "s"\n[supervisor]\ncore_nice = "-5"\n', "supervisor.core_nice: a nice value"),
        ('site = "s"\n[supervisor]\ncore_nice = true\n', "supervisor.core_nice: a nice value"),
        (
            'site = "s"\n[supervisor]\nfork_server = "yes"\n',
            "supervisor.fork_server: expected true or false",
        ),
        ('site = "s"\nextensions = 3\n', "extensions: expected a table"),
        ('site = "s"\n[extensions.m]\nmodule = 3\n', "extensions.m.module: expected"),
        ('site = "s"\n[extensions.m]\nmodule = "a b"\n', "not a Python module name"),
        ('site = "s"\n[extensions.m]\ncommand = "bin/x"\n', "extensions.m.command: expected"),
        ('site = "s"\n[extensions.m]\ncommand = []\n', "extensions.m.command: expected at least"),
        ('site = "s"\n[extensions.m]\ncommand = ["x", 1]\n', "extensions.m.command[1]"),
        ('site = "s"\n[extensions.m]\nmodule = "x"\nenabled = "yes"\n', "enabled: expected true"),
        ('site = "s"\n[extensions.m]\nmodule = "x"\ndevices = "m"\n', "m.devices: expected"),
        ('site = "s"\n[extensions.m]\nmodule = "x"\nconfig = 1\n', "m.config: expected a table"),
        ('site = "s"\n[extensions.m]\nmodule = "x"\nrole = "boss"\n', "unknown role 'boss'"),
        ('site = "s"\n[extensions.m]\nmodule = "x"\nreads = ["a//b"]\n', "m.reads[0]"),
        (
            'site = "s"\n[extensions.m]\nmodule = "x"\n[extensions.m.config]\nv = nan\n',
            "extensions.m.config.v",
        ),
        ('site = "s"\n[extensions]\nm = 1\n', "extensions.m: expected a table"),
    ],
)
def test_wrong_values_are_named(tmp_path, text, expected):
    assert expected in error(tmp_path, text)


def test_module_and_command_exactly_one(tmp_path):
    both = 'site = "s"\n[extensions.m]\nmodule = "x"\ncommand = ["y"]\n'
    neither = 'site = "s"\n[agents.m]\nreads = ["a/b"]\n'
    assert "extensions.m: set exactly one of `module` and `command`" in error(tmp_path, both)
    assert "agents.m: set exactly one of `module` and `command`" in error(tmp_path, neither)


def test_duplicate_names_across_sections(tmp_path):
    text = 'site = "s"\n[extensions.m]\nmodule = "x"\n[simulators.m]\nmodule = "y"\n'
    assert "simulators.m: the name 'm' is already used in [extensions]" in error(tmp_path, text)


@pytest.mark.parametrize("name", ["smxcore", "admin", "supervisor", "core"])
def test_reserved_names(tmp_path, name):
    text = f'site = "s"\n[agents.{name}]\nmodule = "x"\n'
    assert f"agents.{name}: the name {name!r} is reserved" in error(tmp_path, text)


@pytest.mark.parametrize("name", ["Meter", "1m", '"a.b"', '"m x"', "x" * 33])
def test_bad_names(tmp_path, name):
    text = f'site = "s"\n[extensions.{name}]\nmodule = "x"\n'
    assert "invalid client name" in error(tmp_path, text)


@pytest.mark.parametrize("dev", ["PV", "p v", "", "1pv", "pv/1"])
def test_bad_device_ids(tmp_path, dev):
    text = f'site = "s"\n[extensions.m]\nmodule = "x"\ndevices = ["m", "{dev}"]\n'
    assert "extensions.m.devices[1]" in error(tmp_path, text)


def test_a_device_has_one_owner(tmp_path):
    text = (
        'site = "s"\n[extensions.a]\nmodule = "x"\ndevices = ["pv"]\n'
        '[extensions.b]\nmodule = "x"\ndevices = ["b", "pv"]\n'
    )
    assert "extensions.b.devices[1]: device 'pv' is already owned by 'a'" in error(tmp_path, text)
    dup = 'site = "s"\n[extensions.a]\nmodule = "x"\ndevices = ["a", "a"]\n'
    assert "devices[1]: 'a' is listed twice" in error(tmp_path, dup)


def test_a_client_is_not_named_after_a_device_another_process_owns(tmp_path):
    # Its role lets a client write {name}/...: an agent named `smm` could write the meter's points.
    for order in ((0, 1), (1, 0)):
        tables = [
            '[extensions.meter]\nmodule = "x"\ndevices = ["smm"]\n',
            '[agents.smm]\nmodule = "y"\ndevices = ["zzz"]\n',
        ]
        text = 'site = "s"\n' + "".join(tables[i] for i in order)
        assert "agents.smm: the name 'smm' is a device owned by 'meter'" in error(tmp_path, text)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SiteConfigError, match="missing.toml: cannot read site file"):
        load_site_config(tmp_path / "missing.toml")
    assert "invalid TOML" in error(tmp_path, "site = \n")
    path = tmp_path / "bin.toml"
    path.write_bytes(b'site = "\xff"\n')
    with pytest.raises(SiteConfigError, match="not UTF-8"):
        load_site_config(path)


def test_socket_path_too_long_is_named(tmp_path):
    text = f'site = "s"\nhome = "{"x" * 120}"\n'
    assert "core.socket:" in error(tmp_path, text)


def test_smx_run_with_a_missing_or_bad_file_exits_2(tmp_path):
    r = run_smx("run", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2
    assert f"smx run: {tmp_path / 'missing.toml'}: cannot read site file" in r.stderr
    bad = write(tmp_path, 'site = "s"\n[extensions.m]\nmodule = "x"\nport = 1\n')
    r = run_smx("run", "--config", str(bad))
    assert r.returncode == 2
    assert f"{bad}: extensions.m.port: unknown key" in r.stderr
    assert not (tmp_path / "pki").exists()  # nothing provisioned from a bad file
    r = run_smx("status", "--home", str(tmp_path))
    assert r.returncode == 1 and "no supervisor has run the site" in r.stderr
    assert "smx run --config" in r.stderr


toml_text = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                'site = "s"\n',
                "site = 1\n",
                "[core]\n",
                "[core.history]\n",
                'flush_interval = "1s"\n',
                "[supervisor]\n",
                'backoff_max = "0s"\n',
                "[extensions.m]\n",
                "[agents.m]\n",
                "[simulators.s]\n",
                'module = "x"\n',
                'command = ["x"]\n',
                'devices = ["m", "M"]\n',
                'reads = ["**"]\n',
                "enabled = 1\n",
                "[extensions.m.config]\n",
                "x = 1979-05-27\n",
                "home = '/'\n",
                'tcp = "h:0"\n',
                "= \n",
            ]
        ),
        max_size=12,
    ).map("".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(toml_text)
def test_random_text_raises_only_site_config_error(text):
    try:
        parse_site_config(text, "fuzz.toml", Path("/tmp"))
    except SiteConfigError as err:
        assert str(err).startswith("fuzz.toml: ")


# --------------------------------------------------------------------------- programs
# What a process runs is checked when the file is loaded, as its child would find it: a wrong
# module or command is one line naming the key, not a process restarted for ever.


def program_error(tmp_path: Path, table: str, body: str) -> str:
    return error(tmp_path, f'site = "s"\n[{table}]\n{body}\n')


def test_a_module_not_found_is_named_with_the_nearest_one(tmp_path):
    body = 'module = "extensions.smmm"'
    assert program_error(tmp_path, "extensions.meter", body) == (
        "extensions.meter.module: no module named 'extensions.smmm' "
        "(did you mean 'extensions.smm'?)"
    )
    body = 'module = "extenshuns.smm"'
    assert program_error(tmp_path, "agents.north", body) == (
        "agents.north.module: no module named 'extenshuns.smm': no package 'extenshuns' "
        "(did you mean 'extensions.smm'?)"
    )
    body = 'module = "untrusted.zzzzzz"'  # nothing near: where it was looked for
    assert program_error(tmp_path, "agents.north", body) == (
        "agents.north.module: no module named 'untrusted.zzzzzz': package 'untrusted' "
        f"({ROOT / 'untrusted'}) has no 'zzzzzz'"
    )
    message = program_error(tmp_path, "simulators.sim", 'module = "qqqqqq_nothing"')
    assert message.startswith("simulators.sim.module: no module named 'qqqqqq_nothing' in the ")
    assert f"site home {tmp_path}, the project {ROOT}" in message


def test_a_module_must_be_runnable_with_python_m(tmp_path):
    body = 'module = "extensions.sdk"'  # a package without __main__
    assert program_error(tmp_path, "extensions.m", body) == (
        "extensions.m.module: 'extensions.sdk' is a package without a __main__ module: name "
        "the module that runs the process"
    )
    body = 'module = "extensions.smm.config.main"'  # config is a module
    assert program_error(tmp_path, "extensions.m", body) == (
        "extensions.m.module: no module named 'extensions.smm.config.main': "
        "'extensions.smm.config' is a module, not a package"
    )


def test_modules_are_found_in_the_site_home_and_the_project_wherever_smx_runs(
    tmp_path, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "only_here.py").write_text("")
    monkeypatch.chdir(elsewhere)  # the directory `smx run` was started in is not the child's
    site = tmp_path / "site"
    site.mkdir()
    (site / "mine.py").write_text("")
    pkg = site / "myext"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("")
    text = (
        'site = "s"\n[extensions.a]\nmodule = "mine"\n[extensions.b]\nmodule = "myext"\n'
        '[agents.c]\nmodule = "untrusted.planner"\n[simulators.d]\nmodule = "examples.battery"\n'
    )
    cfg = load_site_config(write(site, text))
    assert [p.module for p in cfg.processes] == [
        "mine",
        "myext",
        "untrusted.planner",
        "examples.battery",
    ]
    text = 'site = "s"\n[extensions.a]\nmodule = "only_here"\n'
    assert "no module named 'only_here'" in error(site, text)
    # The home, not the site file's directory, is where a process starts.
    text = 'site = "s"\nhome = "state"\n[extensions.a]\nmodule = "mine"\n'
    assert f"in the site home {site / 'state'}" in error(site, text)
    (site / "state").mkdir()
    (site / "state" / "mine.py").write_text("")
    load_site_config(write(site, text))


def test_a_module_is_found_without_importing_it_or_its_package(tmp_path):
    marker = tmp_path / "imported"
    pkg = tmp_path / "noisy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (pkg / "run.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    load_site_config(write(tmp_path, 'site = "s"\n[extensions.n]\nmodule = "noisy.run"\n'))
    assert not marker.exists()
    assert "noisy" not in sys.modules and "noisy.run" not in sys.modules
    assert "no module named 'noisy.walk'" in error(
        tmp_path, 'site = "s"\n[extensions.n]\nmodule = "noisy.walk"\n'
    )
    assert not marker.exists()


def test_a_module_written_after_a_first_look_is_found(tmp_path):
    text = 'site = "s"\n[extensions.n]\nmodule = "late"\n'
    assert "no module named 'late'" in error(tmp_path, text)
    (tmp_path / "late.py").write_text("")
    load_site_config(write(tmp_path, text))


def test_a_command_must_exist_and_be_executable(tmp_path):
    assert program_error(tmp_path, "extensions.m", 'command = ["/no/such/prog", "-v"]') == (
        "extensions.m.command[0]: /no/such/prog: no such file"
    )
    # Relative to the site file's directory, as it runs.
    assert program_error(tmp_path, "simulators.s", 'command = ["bin/sim"]') == (
        f"simulators.s.command[0]: {tmp_path / 'bin/sim'}: no such file"
    )
    (tmp_path / "bin").mkdir()
    sim = tmp_path / "bin" / "sim"
    sim.write_text("#!/bin/sh\nexit 0\n")
    assert program_error(tmp_path, "simulators.s", 'command = ["bin/sim"]') == (
        f"simulators.s.command[0]: {sim} is not an executable file"
    )
    assert program_error(tmp_path, "simulators.s", f'command = ["{tmp_path / "bin"}"]') == (
        f"simulators.s.command[0]: {tmp_path / 'bin'} is not an executable file"
    )
    sim.chmod(0o755)
    cfg = load_site_config(write(tmp_path, 'site = "s"\n[simulators.s]\ncommand = ["bin/sim"]\n'))
    assert cfg.processes[0].command == (str(sim),)
    message = program_error(tmp_path, "agents.a", 'command = ["no-such-prog-xq", "x"]')
    assert message.startswith(
        "agents.a.command[0]: 'no-such-prog-xq' is not an executable found on PATH ("
    )
    assert message.endswith("); give its path")
    load_site_config(write(tmp_path, 'site = "s"\n[agents.a]\ncommand = ["sh", "-c", "true"]\n'))


def test_a_disabled_process_is_not_checked(tmp_path):
    text = (
        'site = "s"\n[extensions.a]\nmodule = "extensions.smmm"\nenabled = false\n'
        '[simulators.b]\ncommand = ["/no/such/prog"]\nenabled = false\n'
    )
    assert [p.enabled for p in load_site_config(write(tmp_path, text)).processes] == [False, False]


# --------------------------------------------------------------------------- provisioning

SMALL = """\
site = "usm-0017"
[extensions.meter]
module = "x"
devices = ["meter", "pv"]
[extensions.meter.config]
password = "s3cret"
[agents.lessag]
module = "y"
[simulators.sim]
module = "z"
"""


def test_first_start_provisions_everything_and_the_second_changes_nothing(tmp_path):
    import json

    from trusted.core.config import load_core_config
    from trusted.pki import SiteCA
    from trusted.policy import Policy
    from trusted.supervisor.provision import provision

    cfg = load_site_config(write(tmp_path, SMALL))
    first = provision(cfg)
    assert sorted(first.issued) == ["admin", "lessag", "meter", "supervisor"]
    assert first.refused == {}
    ca = SiteCA.load(tmp_path / "pki")
    assert {c.name: c.domain for c in ca.list()}["lessag"] == "untrusted"
    assert Policy.load(tmp_path / "policy.toml").bindings_count == 4
    assert load_core_config(tmp_path / "core.toml", home=tmp_path).site == "usm-0017"
    conf = tmp_path / "run" / "meter.config.json"
    assert json.loads(conf.read_text()) == {"password": "s3cret"}
    assert conf.stat().st_mode & 0o777 == 0o600
    assert provision(cfg).issued == []  # certificates are kept


def test_provisioning_renews_expiring_and_keeps_revoked_certificates(tmp_path):
    from trusted.pki import SiteCA
    from trusted.supervisor.provision import provision

    cfg = load_site_config(write(tmp_path, SMALL))
    provision(cfg)
    ca = SiteCA.load(tmp_path / "pki")
    ca.issue("meter", "trusted", days=10, replace=True)  # expires within 30 days
    ca.revoke("lessag")  # the operator's decision: not undone behind their back
    ca.revoke("supervisor")  # the supervisor's own: simply re-issued
    again = provision(cfg)
    assert sorted(again.issued) == ["meter", "supervisor"]
    assert again.refused["lessag"].startswith("certificate revoked")
    assert "smx pki issue lessag --domain untrusted" in again.refused["lessag"]
    current = {c.name: c for c in SiteCA.load(tmp_path / "pki").list() if not c.revoked}
    assert "lessag" not in current and "supervisor" in current
    assert current["meter"].not_after > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)


def test_provisioning_refuses_the_ca_of_another_site(tmp_path):
    from trusted.pki import SiteCA
    from trusted.supervisor.provision import ProvisionError, provision

    SiteCA.init(tmp_path / "pki", "other-site")
    with pytest.raises(ProvisionError, match="CA of site 'other-site'"):
        provision(load_site_config(write(tmp_path, SMALL)))
