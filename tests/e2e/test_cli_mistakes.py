"""The first hour of a new user, mistake by mistake: each one the real `smx` command can be given
(wrong home, no certificate, an expired, foreign or mismatched one, no core, a second core, bad
arguments and filter values, a closed pipe, Ctrl-C) ends in one line that says what to do and
the exit code README.md documents, never in a traceback. Against a real core (TestSite) and
real `smx` processes."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from extensions.sdk.testing import TestSite, free_port, smx_command, wait_for
from tests.support.certs import load_ca, make_cert, utcnow, write_pair


@dataclass(frozen=True)
class Mistake:
    id: str
    args: tuple[str, ...]  # after `smx`; {home}, {foreign}, {tmp}, {pid}, {port} filled in
    code: int | set[int]
    line: str | None  # regex the one line on stderr must match (None: no line at all)
    how: str = "run"  # run | closed-stdout | sigint-loading | sigint-provisioning | sigint-watch
    logs: bool = False  # the command logs on stderr (run, core): only its last line counts


MISTAKES = [
    # -- where the site is
    Mistake(
        "wrong-home",
        ("--home", "{tmp}/nowhere", "points", "get", "core/uptime"),
        2,
        r"smx points: no site at \S+/nowhere \(from --home\): no such directory; give the site "
        r"directory with --home or \$SMX_HOME, or create a site with `smx pki init --site ID`",
    ),
    Mistake(
        "home-without-site",
        ("--home", "{tmp}", "whoami"),
        2,
        r"smx whoami: no site CA in \S+/pki \(from --home\): \S+/pki/ca.crt not found; give ",
    ),
    Mistake("pki-wrong-home", ("--home", "{tmp}", "pki", "list"), 2, r"smx pki: no site CA in "),
    Mistake(
        "verify-wrong-home", ("--home", "{tmp}", "audit", "--verify"), 2, r"smx audit: no site"
    ),
    Mistake("core-wrong-home", ("--home", "{tmp}/nowhere", "core"), 2, r"smx core: no site at "),
    Mistake("policy-wrong-home", ("--home", "{tmp}", "policy", "show"), 2, r"smx policy: no site"),
    Mistake("status-wrong-home", ("--home", "{tmp}/nowhere", "status"), 2, r"smx status: no site"),
    Mistake(
        "run-wrong-home",
        ("--home", "{tmp}", "run"),
        2,
        r"smx run: \S+/site.toml: cannot read site file: .*; give the site file with --config "
        r"or the site directory with --home",
    ),
    # -- certificates
    Mistake(
        "no-certificate",
        ("whoami", "--as", "nobody"),
        2,
        r"smx whoami: no certificate for client 'nobody': \S+/pki/clients/nobody.crt not found; "
        r"issue one with `smx pki issue nobody --domain trusted\|untrusted`, or pick another "
        r"client with --as",
    ),
    Mistake(
        "expired-certificate",
        ("whoami", "--cert", "{tmp}/old.crt", "--key", "{tmp}/old.key"),
        2,
        r"smx whoami: certificate \S+/old.crt has expired: issue a new one with "
        r"`smx pki issue old --domain untrusted --replace`",
    ),
    Mistake(
        "certificate-not-yet-valid",
        ("whoami", "--cert", "{tmp}/future.crt", "--key", "{tmp}/future.key"),
        2,
        r"smx whoami: certificate \S+/future.crt is not valid yet: is this machine's clock right "
        r"\(now \d{{4}}-",
    ),
    Mistake(
        "not-a-certificate",
        (
            "whoami",
            "--cert",
            "{home}/pki/clients/admin.key",
            "--key",
            "{home}/pki/clients/admin.key",
        ),
        2,
        r"smx whoami: \S+/admin.key is not a PEM certificate: give the certificate `smx pki issue` "
        r"wrote",
    ),
    Mistake(
        "foreign-certificate",
        (
            "whoami",
            "--cert",
            "{foreign}/pki/clients/admin.crt",
            "--key",
            "{foreign}/pki/clients/admin.key",
        ),
        2,
        r"smx whoami: certificate \S+/admin.crt was not issued by the site CA \S+/ca.crt: the "
        r"core would refuse it",
    ),
    Mistake(
        "mismatched-key",
        (
            "whoami",
            "--cert",
            "{home}/pki/clients/admin.crt",
            "--key",
            "{home}/pki/clients/meter.key",
        ),
        2,
        r"smx whoami: private key \S+/meter.key does not belong to certificate \S+/admin.crt: use "
        r"the key issued with it, or issue both again with `smx pki issue admin --domain trusted "
        r"--replace`",
    ),
    Mistake(
        "another-sites-core",
        (
            "whoami",
            "--ca",
            "{foreign}/pki/ca.crt",
            "--cert",
            "{foreign}/pki/clients/admin.crt",
            "--key",
            "{foreign}/pki/clients/admin.key",
        ),
        2,
        r"smx whoami: the core at \S+/core.sock has a certificate that the CA \S+/ca.crt did not "
        r"issue: it is another site's core",
    ),
    Mistake(
        "revoked-certificate",
        ("whoami", "--as", "gone"),
        1,
        r"smx whoami: UNAUTHENTICATED \[CERTIFICATE_REVOKED\]: .*; issue a new one with "
        r"`smx pki issue gone --domain trusted`",
    ),
    # -- the core
    Mistake(
        "core-not-running",
        ("--home", "{foreign}", "whoami"),
        3,
        r"smx whoami: no core is running at \S+/core.sock \(there is no socket\): start it with "
        r"`smx core`, or the whole site with `smx run`",
    ),
    Mistake(
        "core-stopped-uncleanly",
        ("--home", "{foreign}", "points", "ls", "--socket", "{tmp}/stale.sock"),
        3,
        r"smx points: no core is running at \S+/stale.sock \(the socket is left over from a core "
        r"that stopped\)",
    ),
    Mistake(
        "nothing-at-target",
        ("whoami", "--target", "127.0.0.1:{port}"),
        3,
        r"smx whoami: nothing listens at 127.0.0.1:{port}: is the core running with `tcp` in its "
        r"core.toml\?",
    ),
    Mistake(
        "second-core",
        ("core",),
        1,
        r"smx core: another core \(pid {pid}\) is already serving this site on \S+/core.sock: "
        r"one core per site; stop that one first, or give another site with --home",
    ),
    # -- arguments and filter values
    Mistake(
        "missing-argument",
        ("points", "get"),
        2,
        r"smx points get: the following arguments are required: names "
        r"\(see `smx points get --help`\)",
    ),
    Mistake("unknown-command", ("pointz",), 2, r"smx: argument COMMAND: invalid choice: 'pointz'"),
    Mistake(
        "unknown-audit-kind",
        ("audit", "--kind", "bogus"),
        2,
        r"smx audit: unknown --kind 'bogus': use one of audit_break, checkpoint, denied, "
        r"policy_reload, .*setpoint_request, .*write$",
    ),
    Mistake(
        "audit-identity-not-a-uri",
        ("audit", "--identity", "meter"),
        2,
        r"smx audit: --identity: not an SMX identity: 'meter' \(expected spiffe://",
    ),
    Mistake("audit-bad-glob", ("audit", "--point", "me ter/*"), 2, r"smx audit: --point: "),
    Mistake(
        "audit-negative-limit",
        ("audit", "--limit", "-1"),
        2,
        r"smx audit: argument --limit: must be 0 or more, got -1",
    ),
    Mistake(
        "verify-with-filters",
        ("audit", "--verify", "--kind", "denied"),
        2,
        r"smx audit: --verify checks the whole log: --kind cannot go with it",
    ),
    Mistake(
        "unknown-aggregation",
        ("points", "history", "meter/P", "--agg", "median"),
        2,
        r"smx points history: argument --agg: invalid choice: 'median' \(choose from '?avg'?, ",
    ),
    Mistake(
        "bad-duration",
        ("points", "history", "meter/P", "--since", "soon"),
        2,
        r'smx points: --since: expected a duration like "30d", got "soon"',
    ),
    Mistake(
        "not-an-int",
        ("points", "write", "--as", "meter", "meter/P=1.5", "--kind", "int"),
        2,
        r"smx points: not a whole number \(--kind int\): '1.5'",
    ),
    Mistake(
        "bad-point-name",
        ("points", "get", "Meter P"),
        2,
        r"smx points: INVALID_ARGUMENT \[INVALID_POINT_NAME\]: ",
    ),
    Mistake(
        "setpoint-neither-name-nor-id",
        ("setpoint", "status"),
        2,
        r"smx setpoint: give either a setpoint NAME or --id",
    ),
    # -- refusals of the core
    Mistake(
        "not-allowed",
        ("points", "write", "--as", "lessag", "meter/P=0"),
        1,
        r"smx points: PERMISSION_DENIED \[PERMISSION_NOT_GRANTED\]: .*; `smx whoami --as lessag` "
        r"shows its rights, `smx policy bind` grants roles",
    ),
    # -- the output goes nowhere
    Mistake("broken-pipe-points", ("points", "ls"), 141, None, how="closed-stdout"),
    Mistake("broken-pipe-table", ("pki", "list"), 141, None, how="closed-stdout"),
    # -- Ctrl-C
    Mistake("ctrl-c-watch", ("points", "watch", "core/*"), 130, None, how="sigint-watch"),
    Mistake(
        "ctrl-c-while-loading",
        ("run", "--config", "{tmp}/run/site.toml"),
        # -2 (ended by the signal, as Python does when the Ctrl-C lands outside its handlers,
        # e.g. while a C extension initialises) was seen under load; never a traceback.
        {130, 0, -2},
        r"smx( run)?: interrupted|smx run: stopped during start-up; nothing left running",
        how="sigint-loading",
        logs=True,
    ),
    Mistake(
        "ctrl-c-while-provisioning",
        ("run", "--config", "{tmp}/run/site.toml"),
        0,
        r"smx run: stopped during start-up; nothing left running",
        how="sigint-provisioning",
        logs=True,
    ),
]


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[TestSite, TestSite]]:
    site = TestSite(
        {
            "meter": ("trusted", ["trusted-extension"], []),
            "lessag": ("untrusted", ["untrusted-agent"], []),
            "gone": ("trusted", ["trusted-extension"], []),
        }
    )
    foreign = TestSite({})  # another site: its own CA, no core running
    try:
        site.start()
        foreign.provision()
        site.smx("pki", "revoke", "gone")
        site.smx("points", "declare", "--as", "meter", "meter/P", "--unit", "W")
        wait_for(lambda: "CERTIFICATE_REVOKED" in whoami(site, "gone"), what="CRL re-read")
        yield site, foreign
    finally:
        site.close()
        foreign.close()


def whoami(site: TestSite, name: str) -> str:
    argv = [*smx_command(), "--home", str(site.home), "whoami", "--as", name]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stderr


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="smx-m-"))  # short: socket paths max 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def prepare(tmp: Path, site: TestSite) -> None:
    """The odd files some mistakes need, in `tmp`."""
    ca_cert, ca_key = load_ca(site.home / "pki")
    cert, key = make_cert(
        ca_cert,
        ca_key,
        uris=["spiffe://test-site/untrusted/old"],
        not_before=utcnow() - dt.timedelta(days=10),
        not_after=utcnow() - dt.timedelta(days=1),
    )
    write_pair(tmp, "old", cert, key)
    cert, key = make_cert(
        ca_cert,
        ca_key,
        uris=["spiffe://test-site/trusted/future"],
        not_before=utcnow() + dt.timedelta(days=1),
        not_after=utcnow() + dt.timedelta(days=10),
    )
    write_pair(tmp, "future", cert, key)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp / "stale.sock"))  # bound, never listened on: what a killed core leaves
    stale.close()
    (tmp / "run").mkdir()
    (tmp / "run" / "site.toml").write_text('site = "ctrl-c"\n')


def run(m: Mistake, argv: list[str]) -> tuple[int, str]:
    """Run `smx argv` the way the mistake needs; (exit code, stderr)."""
    stdout: int = subprocess.PIPE
    if m.how == "closed-stdout":
        # A pipe whose reader is gone before smx writes anything (`smx status | head -0`).
        reader, stdout = os.pipe()
        os.close(reader)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # Ctrl-C reaches the terminal's process group: this one
    )
    seen: set[int] = set()
    if m.how == "closed-stdout":
        os.close(stdout)
    elif m.how == "sigint-watch":
        assert proc.stdout is not None
        assert proc.stdout.readline()  # it is watching
        os.killpg(proc.pid, signal.SIGINT)
    elif m.how in ("sigint-loading", "sigint-provisioning"):

        def ready() -> bool:
            me = psutil.Process(proc.pid)
            children = me.children(recursive=True)
            seen.update(c.pid for c in children)
            if m.how == "sigint-loading":  # smx has started loading its commands (psutil's:
                # `smx run` loads no grpc)
                return "_psutil_linux" in Path(f"/proc/{proc.pid}/maps").read_text()
            return any("trusted.supervisor.provision" in " ".join(c.cmdline()) for c in children)

        wait_for(ready, timeout=30, step=0.005, what=m.how)
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    left = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert left == [], f"left running after Ctrl-C: {left}"
    return proc.returncode, err


@pytest.mark.parametrize("m", MISTAKES, ids=[m.id for m in MISTAKES])
def test_each_mistake_is_one_line_and_its_exit_code(sites, tmp, m: Mistake):
    site, foreign = sites
    prepare(tmp, site)
    assert site.core is not None
    fill = {
        "home": site.home,
        "foreign": foreign.home,
        "tmp": tmp,
        "pid": site.core.pid,
        "port": free_port(),
    }
    args = [a.format(**fill) for a in m.args]
    if "--home" not in args:
        args = ["--home", str(site.home), *args]
    code, err = run(m, [*smx_command(), *args])
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if not m.logs:
        assert len(lines) == (0 if m.line is None else 1), err
    assert code in (m.code if isinstance(m.code, set) else {m.code}), err
    if m.line is not None and code != -2:  # ended by the signal itself: nothing to say
        assert re.match(m.line.format(**fill), lines[-1]), lines[-1]
