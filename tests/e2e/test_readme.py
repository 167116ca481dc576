"""README.md's walk-through cannot rot: the shell blocks marked ```sh walkthrough:NAME (setup,
core, use, grpcurl, stop) are run as written, in order, by one bash, as a user types them in
one terminal, in a directory laid out like a clone after `./dev` set it up (`dev`, `.venv`).
bash starts without the venv on its PATH: the README's own activation must put `smx` there.
The third-party client snippet (the ```python block importing smx.client) runs against the
same core, before it is stopped. Each test below checks what the user sees of one part: exit
codes and the key lines of output."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
VENV = Path(sys.prefix)
BLOCK = re.compile(r"^```sh walkthrough:(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
MARK = "\x1e"  # record separator: starts the lines this test adds around each command
TIMEOUT = 150  # s for the whole walk-through (it takes some 30 s); a command that hangs fails it
# The walk-through runs once, in the fixture of the first test: more than pytest's 120 s a test.
pytestmark = pytest.mark.timeout(TIMEOUT + 30)


def walkthrough() -> dict[str, str]:
    text = README.read_text()
    found = BLOCK.findall(text)
    names = [name for name, _ in found]
    assert len(set(names)) == len(names), f"a walkthrough block name twice: {names}"
    assert len(found) == text.count("```sh walkthrough:"), "a walkthrough block not closed"
    return dict(found)


def client_snippet() -> str:
    snippets = [b for b in PYTHON_BLOCK.findall(README.read_text()) if "smx.client" in b]
    assert len(snippets) == 1, "README.md should have one ```python client snippet"
    return snippets[0]


def commands(block: str) -> list[str]:
    """The commands of a block, a line each (continuation lines joined); no blanks, no comments."""
    out: list[str] = []
    pending = ""
    for line in block.splitlines():
        if pending:
            pending += "\n" + line
        elif line.strip() and not line.lstrip().startswith("#"):
            pending = line
        if pending and not pending.endswith("\\"):
            out.append(pending)
            pending = ""
    assert not pending, f"a block ends with a continuation line: {pending!r}"
    return out


@dataclass
class Ran:
    block: str
    command: str
    rc: int
    output: str  # stdout and stderr, as the terminal shows them


@dataclass
class Session:
    clone: Path
    ran: list[Ran]
    terminal: str  # everything bash printed
    left_running: bool  # processes of the session alive after the stop block
    grpcurl: bool  # grpcurl was installed, so its block ran

    def blocks(self, name: str) -> list[Ran]:
        return [r for r in self.ran if r.block == name]

    def one(self, prefix: str, block: str | None = None) -> Ran:
        found = [
            r
            for r in self.ran
            if r.command.startswith(prefix) and (block is None or r.block == block)
        ]
        assert len(found) == 1, f"{prefix!r}: {len(found)} commands ran, not one"
        return found[0]

    @property
    def core_log(self) -> str:
        return (self.clone / "site" / "core.log").read_text()


def script(steps: list[tuple[str, str]]) -> str:
    """A bash script that runs each command as typed and prints a marker line with its block and
    index before it, and its exit code after it."""
    lines = ["exec 2>&1"]  # one stream, in the order the terminal would show it
    for i, (block, command) in enumerate(steps):
        lines.append(f"printf '{MARK}begin {i} {block}\\n'")
        lines.append(command)
        lines.append(f"printf '\\n{MARK}end {i} %d\\n' \"$?\"")
    return "\n".join(lines) + "\n"


def parse(out: str, steps: list[tuple[str, str]]) -> list[Ran]:
    ran = []
    for m in re.finditer(rf"{MARK}begin (\d+) (\w+)\n(.*?)\n{MARK}end \1 (\d+)\n", out, re.DOTALL):
        i = int(m.group(1))
        ran.append(Ran(m.group(2), steps[i][1], int(m.group(4)), m.group(3)))
    return ran


def clean_path() -> str:
    """The user's PATH before activation: without the venv this test runs in."""
    venv_bin = (VENV / "bin").resolve()
    dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and Path(d).resolve() != venv_bin)


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    if not (VENV / "bin" / "activate").is_file() or not (VENV / ".installed").is_file():
        pytest.skip(
            f"not run from the venv `./dev` sets up ({VENV} has no bin/activate or .installed)"
        )
    blocks = walkthrough()
    clone = Path(tempfile.mkdtemp(prefix="smx-readme-"))
    # What the walk-through needs of a clone that `./dev` has set up.
    (clone / "dev").symlink_to(ROOT / "dev")
    (clone / ".venv").symlink_to(VENV)
    (clone / "client.py").write_text(client_snippet())
    grpcurl = (VENV / "bin" / "grpcurl").exists() or shutil.which("grpcurl", path=clean_path())
    steps: list[tuple[str, str]] = []
    for name, block in blocks.items():
        if name == "grpcurl" and not grpcurl:
            continue
        steps += [(name, c) for c in commands(block)]
        if name == "setup":
            steps.append(("probe", "command -v smx"))
        if name == "use":  # the client snippet, against the walk-through's running core
            steps.append(("probe", "smx points get meter/P --json"))
            steps.append(("client", "python client.py"))
            steps.append(("probe", "smx points get meter/P --json"))
    drop = ("SMX_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PATH=clean_path(), TERM="dumb")
    proc = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-s"],
        cwd=clone,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the core started in the background too
    )
    try:
        out, _ = proc.communicate(script(steps), timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the walk-through did not end within {TIMEOUT} s; it printed:\n{out}")
    left_running = _alive(proc.pid)
    if left_running:
        os.killpg(proc.pid, signal.SIGKILL)
    ran = parse(out, steps)
    assert len(ran) == len(steps), f"bash stopped after {len(ran)} of {len(steps)} commands:\n{out}"
    try:
        yield Session(clone, ran, out, left_running, bool(grpcurl))
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def _alive(pgid: int) -> bool:
    """True while some process of the group is alive, given a moment to go."""
    deadline = time.monotonic() + 2
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def test_the_readme_marks_the_walkthrough_blocks():
    assert list(walkthrough()) == ["setup", "core", "use", "grpcurl", "stop"]


def lines_of(output: str) -> list[str]:
    """Lines with runs of spaces made one, as a table row reads."""
    return [" ".join(line.split()) for line in output.splitlines()]


def test_setup_activates_the_venv_and_provisions_the_site(session):
    for r in session.blocks("setup"):
        assert r.rc == 0, f"{r.command}\n{r.output}"
    assert session.one("./dev smx --help").output.startswith("usage: smx")
    smx = session.one("command -v smx").output.strip()
    assert Path(smx).parent.resolve() == (VENV / "bin").resolve(), smx
    assert "site CA for usm-0017 created" in session.one("smx pki init").output
    assert "bound spiffe://usm-0017/trusted/meter to trusted-extension" in (
        session.one("smx policy bind meter").output
    )
    assert "bound spiffe://usm-0017/untrusted/lessag to untrusted-agent" in (
        session.one("smx policy bind lessag").output
    )
    pki = session.clone / "site" / "pki" / "clients"
    assert {p.name for p in pki.glob("*.key")} == {"admin.key", "meter.key", "lessag.key"}


def test_the_core_runs_in_the_background_with_its_log_in_a_file(session):
    for r in session.blocks("core"):
        assert r.rc == 0, f"{r.command}\n{r.output}"
    ready = session.one("tail -n 1 site/core.log").output.strip()
    assert ready.startswith("smxcore ready: site usm-0017, socket ")
    assert ready.endswith("/site/core.sock")
    # The core's log went to the file, none of it to the terminal.
    assert "smxcore serving site usm-0017" in session.core_log
    assert not re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ trusted\.", session.terminal, re.M)


def test_the_commands_print_what_the_readme_says(session):
    use = {r.command.split("#")[0].strip(): r for r in session.blocks("use")}
    assert len(use) == len(session.blocks("use"))
    refused = use.pop("smx points write --as lessag meter/P=0")
    for command, r in use.items():
        assert r.rc == 0, f"{command}\n{r.output}"
    # refused, with the code and reason the comment shows, exit 1
    assert refused.rc == 1
    assert "PERMISSION_DENIED [PERMISSION_NOT_GRANTED]" in refused.output

    assert "written at revision" in session.one("smx points write --as meter").output
    assert "declared meter/P_set" in session.one("smx points declare").output
    got = lines_of(session.one("smx points get meter/P meter/U1").output)
    assert got[0] == "NAME VALUE UNIT QUALITY SOURCE TIME REVISION WRITER"
    assert re.fullmatch(r"meter/P 1500 - GOOD \S+ \d+ spiffe://usm-0017/trusted/meter", got[1])
    assert re.fullmatch(r"meter/U1 230.5 - GOOD \S+ \d+ spiffe://usm-0017/trusted/meter", got[2])
    listed = lines_of(session.one("smx points ls").output)
    owned = r"meter/P_set W \S+ - spiffe://usm-0017/trusted/meter -"  # \S+: its kind
    assert any(re.fullmatch(owned, row) for row in listed), listed
    watched = lines_of(session.one("smx points watch").output)
    assert re.fullmatch(r"-- snapshot at revision \d+: 2 points", watched[0])
    assert [line.split()[0] for line in watched[2:]] == ["meter/P", "meter/U1"]
    history = lines_of(session.one("smx points history").output)
    assert history[0] == "NAME TIME VALUE QUALITY SAMPLES"
    # Empty right after the write (the README says so), else the minute's average.
    assert all(re.fullmatch(r"meter/P \S+ 1500 GOOD \d+", row) for row in history[1:]), history

    for command in ("smx setpoint request", "smx setpoint status"):
        assert session.one(command).output.startswith("meter/P_set = 2000: PENDING\n")
    who = lines_of(session.one("smx whoami --as meter").output)
    assert "identity spiffe://usm-0017/trusted/meter" in who
    assert "roles trusted-extension" in who
    assert "read,write,control meter/**" in who
    policy = lines_of(session.one("smx policy show").output)
    assert "spiffe://usm-0017/untrusted/lessag untrusted-agent -" in policy
    denied = session.one("smx audit --kind denied").output
    assert re.search(
        r"denied\s+spiffe://usm-0017/untrusted/lessag\s.*PERMISSION_NOT_GRANTED", denied
    )
    assert "hash chain intact" in session.one("smx audit --verify").output
    assert "revoked spiffe://usm-0017/untrusted/lessag" in session.one("smx pki revoke").output
    assert session.one("smx admin reload").output.startswith("policy reloaded")


def test_the_client_snippet_writes_to_the_walkthroughs_core(session):
    client = session.one("python client.py")
    assert (client.rc, client.output) == (0, ""), client.output
    before, after = session.blocks("probe")[1:]
    revision = re.compile(r'"revision": "?(\d+)')
    assert int(revision.search(after.output)[1]) > int(revision.search(before.output)[1])
    assert '"writer": "spiffe://usm-0017/trusted/meter"' in after.output


def test_grpcurl_over_the_unix_socket(session):
    if not session.grpcurl:
        pytest.skip(
            "grpcurl is not installed (`./dev test` puts it into .venv/bin): the README's "
            "grpcurl lines were not run"
        )
    listed, points, audit = session.blocks("grpcurl")
    for r in (listed, points, audit):
        assert r.rc == 0, f"{r.command}\n{r.output}"
    assert "smx.v1.PointService" in listed.output.split()
    assert '"name": "core/uptime"' in points.output
    assert '"reason": "PERMISSION_NOT_GRANTED"' in audit.output


def test_the_core_stops_cleanly(session):
    (stop,) = session.blocks("stop")
    assert stop.rc == 0, stop.output  # wait's exit code is the core's
    assert session.core_log.rstrip().endswith("smxcore stopped")
    assert not (session.clone / "site" / "core.sock").exists()
    assert not session.left_running, "a process of the walk-through still ran after its end"
