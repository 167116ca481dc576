"""The fork server (trusted.supervisor.fork_server), as the supervisor uses it, without root:
a child forked from it is the process its request describes, its output reaches its log, its
exit is reported, and a server that cannot serve is said in one line. Isolation (the privilege
drop, the trust domains) is tested on whole sites in tests/security/test_isolation.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from trusted.supervisor.fork_server import ForkServer, ForkServerError, SpawnRequest
from trusted.supervisor.process import ManagedProcess
from trusted.supervisor.site_config import SupervisorSettings

ROOT = Path(__file__).resolve().parents[2]
EVENT_LOOP = "asyncio"  # the supervisor's (tests/conftest.py)
PROBE = "tests.support.fork_probe"


@pytest.fixture
async def server():
    s = ForkServer("fork-server-test", sys.executable)
    yield s
    await s.close()


def request(tmp_path: Path, what: str, **env: str) -> SpawnRequest:
    base = {"PYTHONPATH": str(ROOT), "FORK_PROBE": what, "PATH": os.environ["PATH"]}
    return SpawnRequest(PROBE, ("--flag", "x"), base | env, str(tmp_path))


async def run_child(server: ForkServer, req: SpawnRequest) -> tuple[int, list[str]]:
    """Fork one child, wait for it, return its exit code and output lines."""
    r, w = os.pipe()
    try:
        child = await server.spawn(req, w)
    finally:
        os.close(w)
    code = await child.wait()
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    return code, out.decode().splitlines()


async def test_a_forked_child_is_the_process_its_request_describes(server, tmp_path):
    code, lines = await run_child(server, request(tmp_path, "exit:3", SMX_NAME="meter"))
    assert code == 3
    seen = json.loads(lines[0])
    assert seen["ppid"] == server.pid  # forked, and reaped by its server
    assert seen["sid"] == seen["pid"]  # a session of its own
    assert seen["argv"][1:] == ["--flag", "x"]
    assert seen["argv"][0].endswith("tests/support/fork_probe.py")  # as `python -m` sets it
    assert seen["main"] == "__main__"
    # What ps shows: the command a fresh start would have had, not the server's.
    assert seen["cmdline"][:5] == [sys.executable, "-m", PROBE, "--flag", "x"]
    assert seen["env"] == {
        "PYTHONPATH": str(ROOT),
        "FORK_PROBE": "exit:3",
        "PATH": os.environ["PATH"],
        "SMX_NAME": "meter",
    }
    assert seen["cwd"] == str(tmp_path)
    assert seen["path0"] == str(ROOT)  # PYTHONPATH first, as a fresh interpreter has it
    assert seen["grpc_loaded"]  # from the image, not imported again
    # stdin, stdout, stderr and the directory listing it made: nothing of the server.
    assert len(seen["fds"]) == 4 and seen["fds"][:3] == [0, 1, 2]


async def test_the_servers_interpreter_flags_are_its_childrens(tmp_path):
    """The supervisor starts its servers with -OO (site_config.PYTHON_FLAGS): each child runs
    without docstrings and asserts, and says so in ps."""
    s = ForkServer("fork-server-test", sys.executable, ("-OO",))
    try:
        code, lines = await run_child(s, request(tmp_path, "exit:0"))
    finally:
        await s.close()
    seen = json.loads(lines[0])
    assert code == 0 and seen["optimize"] == 2
    assert seen["cmdline"][:4] == [sys.executable, "-OO", "-m", PROBE]


async def test_a_child_that_raises_leaves_its_traceback_and_exit_code_1(server, tmp_path):
    code, lines = await run_child(server, request(tmp_path, "raise"))
    assert code == 1
    assert lines[-1] == "RuntimeError: the probe failed on purpose"
    # Its output is unbuffered: the JSON line came before the traceback.
    assert json.loads(lines[0])["pid"] > 0


async def test_a_signalled_child_handles_it_itself_and_its_end_is_reported(server, tmp_path):
    r, w = os.pipe()
    child = await server.spawn(request(tmp_path, "wait"), w)
    os.close(w)
    reader = os.fdopen(r, "rb")
    loop = asyncio.get_running_loop()
    lines = [await loop.run_in_executor(None, reader.readline) for _ in range(2)]
    assert lines[1] == b"waiting\n"
    os.killpg(child.pid, signal.SIGTERM)  # as the supervisor stops a process
    assert await asyncio.wait_for(child.wait(), 10) == 7
    reader.close()
    # A child killed outright is reported as asyncio reports a killed subprocess.
    r, w = os.pipe()
    child = await server.spawn(request(tmp_path, "wait"), w)
    os.close(w)
    os.kill(child.pid, signal.SIGKILL)
    assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGKILL
    os.close(r)


async def test_closing_the_server_ends_its_children(tmp_path):
    server = ForkServer("fork-server-test", sys.executable)
    r, w = os.pipe()
    child = await server.spawn(request(tmp_path, "wait"), w)
    os.close(w)
    await server.close()
    assert await asyncio.wait_for(child.wait(), 10) == -signal.SIGKILL
    await asyncio.sleep(0.2)
    assert _state(child.pid) in ("Z", None)  # ended: kept for its release, or reaped
    os.close(r)


async def test_a_server_that_cannot_start_says_why_and_is_not_retried_at_once(tmp_path):
    server = ForkServer("fork-server-test", "/nonexistent/python")
    with pytest.raises(ForkServerError, match="fork-server-test: cannot start: No such file"):
        await server.spawn(request(tmp_path, "exit:0"), 1)
    with pytest.raises(ForkServerError, match="cannot start: No such file"):
        await server.spawn(request(tmp_path, "exit:0"), 1)


async def test_a_process_whose_server_cannot_start_is_started_on_its_own(tmp_path):
    broken = ForkServer("fork-server-test", "/nonexistent/python")
    changes: list[str] = []
    proc = ManagedProcess(
        "probe",
        "extension",
        [sys.executable, "-m", PROBE],
        env=dict(request(tmp_path, "wait").env),
        cwd=tmp_path,
        log_path=tmp_path / "probe.log",
        settings=SupervisorSettings(),
        on_change=lambda: changes.append("x"),
        fork=(broken, request(tmp_path, "wait")),
    )
    proc.start()
    try:
        log = tmp_path / "probe.log"
        for _ in range(100):
            if log.exists() and "waiting" in log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.1)
        assert proc.state == "starting" and proc.pid is not None
        assert proc.to_json()["forked_from"] is None
        assert json.loads(log.read_text().splitlines()[1])["ppid"] == os.getpid()
    finally:
        await proc.stop()


async def test_an_exit_reported_before_the_spawn_returns_is_not_lost(server, tmp_path):
    # The supervisor's loop busy while the child starts and ends: its pid and its exit arrive
    # together, and the exit must still reach whoever waits for it.
    await run_child(server, request(tmp_path, "exit:0"))  # the server is up
    r, w = os.pipe()
    spawning = asyncio.create_task(server.spawn(request(tmp_path, "exit:5"), w))
    await asyncio.sleep(0)  # the request is sent ...
    time.sleep(1.0)  # ... and the loop is held while the child runs and ends
    child = await spawning
    os.close(w)
    assert await asyncio.wait_for(child.wait(), 5) == 5
    os.close(r)


async def test_an_ended_child_keeps_its_pid_until_the_supervisor_is_done_with_it(server, tmp_path):
    # Reported but not reaped: its pid cannot go to another process that a late signal to
    # its group would then reach.
    r, w = os.pipe()
    child = await server.spawn(request(tmp_path, "exit:0"), w)
    os.close(w)
    assert await asyncio.wait_for(child.wait(), 10) == 0
    await asyncio.sleep(0.2)
    assert _state(child.pid) == "Z"
    child.release()
    for _ in range(50):
        if _state(child.pid) is None:
            break
        await asyncio.sleep(0.05)
    assert _state(child.pid) is None
    os.close(r)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
