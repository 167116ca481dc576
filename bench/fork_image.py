"""Pre-imported process image: what forking SDK processes from one process that already
imported grpc, protobuf and the SDK would save in memory, against starting each the normal way.

A real core (`smx core`, its own process, production config) serves a temporary site; then, one
mode after the other, N idle SDK processes connect to it and stay connected. Each is the
smallest real one: an `Extension` (extensions.sdk) with one polled device publishing one point,
`<name>/P`, every second, with its own client certificate of the site.

- A (fresh): each process is a fresh interpreter (`python fork_image.py --child`), as `smx run`
  starts them today (`python -m extensions...`).
- B (image, frozen): one image process imports grpc, grpc.aio, protobuf, the SDK and the
  generated stubs, runs `gc.collect(); gc.freeze()`, then forks every child; the child sets its
  environment, builds its extension and runs it (its asyncio loop, its channel and grpc's
  threads are created only in the child). The image stays alive and counts in B's total.
- C (image, not frozen): as B without `gc.freeze()`.

`--seconds` (20) after the last process started, every process's Rss, Pss and USS
(Private_Clean + Private_Dirty) is read from /proc/PID/smaps_rollup; the table gives per-process
mean and total per mode and each image mode's total against A's. Every process must be working:
its point is read back from the core (GetPoints, as admin) before and after the measurement, and
must have advanced.

`--collect`: every child runs one full `gc.collect()` 5 s after start, as an idle process
eventually does (a full collection writes to every tracked object, so without `gc.freeze()` in
the image it copies the image's pages into the child).

`--fork-check` also forks, from an image, a probe that makes 20 unary calls and reads a watch
stream, with GRPC_ENABLE_FORK_SUPPORT unset, =true and =false in the image; counts the
grpc_init calls the image's imports make (GRPC_TRACE=api); and shows what grpc does when a
process forks after it made a call (the case an image must never be in).

grpc's rule (grpcio 1.85, doc/fork_support.md "use after fork", and cygrpc's fork_posix.pyx.pxi):
fork is safe while the process has created no grpc object that initialises grpc's core
(a channel, a server, a call): `import grpc`, `grpc.aio` and the generated stubs start no thread
and call no grpc_init, so every child starts grpc from scratch. GRPC_ENABLE_FORK_SUPPORT only
governs forks after that (the Python layer installs its fork handlers at the first grpc_init,
and only when it is true); it does not matter for an image that never used grpc.

    .venv/bin/python bench/fork_image.py [--n 6] [--seconds 20] [--modes ABC] [--collect]
        [--fork-check]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Only the standard library at module level: a child (--child) and the image (--image) import
# the SDK themselves, and nothing of the benchmark's own (psutil, the core's modules).
HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
MB = 2**20
POINT = "P"  # each child publishes <name>/P
MODULES_LINE = "bench-modules:"
COLLECT_ENV = "SMX_BENCH_GC_COLLECT"
STARTED_WITH: set[str] = set()  # sys.modules when the child's own code began

# What the image imports before it forks: the product's fork server's list
# (trusted.supervisor.fork_server.PRELOAD: grpc, protobuf, the SDK, every generated stub; a
# standard-library-only module, so a child still starts with nothing of the benchmark's).
# Each child reports what it imported after the fork.
sys.path.insert(0, str(ROOT))
from trusted.supervisor.fork_server import PRELOAD  # noqa: E402

IMAGE_MODULES = [*PRELOAD, "smx.connection_check"]


# --------------------------------------------------------------------------- the SDK process


def run_extension(environ: dict[str, str]) -> int:
    """The SDK process: an Extension with one polled device, `<name>/P` every second."""
    from extensions.sdk import Extension, PointSpec, PolledDevice, ProcessEnv

    class Counter(PolledDevice):
        def __init__(self, name: str) -> None:
            self.name = name
            self.interval = 1.0
            self.timeout = 2.0
            self.count = 0

        async def poll(self) -> dict[str, Any]:
            self.count += 1
            return {f"{self.name}/{POINT}": float(self.count)}

        async def close(self) -> None:
            pass

    ext = Extension(ProcessEnv.from_environ(environ))
    dev = ext.device_ids[0]
    ext.declare(PointSpec(f"{dev}/{POINT}", unit="W", period=1.0, description="counter"))
    ext.add_device(Counter(dev))

    async def count_modules() -> None:
        # Once connected and publishing: what the process imported beyond what it started with
        # (the image's modules, or a fresh interpreter's), for the report.
        import asyncio

        await asyncio.sleep(5.0)
        if environ.get(COLLECT_ENV):
            gc.collect()  # what a full collection (hours into a run) does to shared pages
        new = sorted(set(sys.modules) - STARTED_WITH)
        print(f"{MODULES_LINE} {len(sys.modules)} {len(new)} {','.join(new)}", flush=True)
        await asyncio.Event().wait()

    ext.background(count_modules, "count-modules")
    return ext.run()


def child_main() -> int:
    """`--child`: mode A, a fresh interpreter."""
    STARTED_WITH.update(sys.modules)
    return run_extension(dict(os.environ))


# --------------------------------------------------------------------------- the image


def image_main(freeze: bool) -> int:
    """`--image`: import, optionally freeze, then fork one child per request line on stdin
    (JSON: environ, log, cwd); answer each with the child's pid. At end of input, SIGTERM the
    children and reap them."""
    import importlib

    for name in IMAGE_MODULES:
        importlib.import_module(name)
    gc.collect()
    if freeze:
        gc.freeze()
    threads = len(os.listdir("/proc/self/task"))
    out = sys.stdout
    out.write(f"ready {os.getpid()} threads={threads} modules={len(sys.modules)}\n")
    out.flush()
    children: list[int] = []
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = fork_child(request, probe=request.get("probe", False))
        if request.get("probe"):
            out.write(f"{pid} {reap(pid, 40.0)}\n")  # a probe is waited for: its exit code
        else:
            children.append(pid)
            out.write(f"{pid}\n")
        out.flush()
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    codes = []
    for pid in children:
        _, status = os.waitpid(pid, 0)
        codes.append(os.waitstatus_to_exitcode(status))
    out.write(f"exited {json.dumps(codes)}\n")
    out.flush()
    return 0


def reap(pid: int, timeout: float) -> int:
    """The exit code of child `pid`, killed (-9) when it has not ended within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fork_child(request: dict[str, Any], probe: bool = False) -> int:
    """Fork one child of the image. In the child, what `smx run` does today between fork and
    exec (a new session, stdin /dev/null, stdout and stderr to its log, no other inherited
    descriptor, only its own environment, its working directory), here before the child's own
    code. Not done here, needed in a product (the image would run as root): the privilege drop
    of trusted/supervisor/isolation.py (mount namespace, capability bounding set, setgroups,
    setresgid, setresuid, PR_SET_NO_NEW_PRIVS, umask 077), a reseed of anything random the
    image holds, and the log pipe passed from the supervisor (SCM_RIGHTS) instead of a file."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the fds are the child's for life
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["environ"])
        os.chdir(request["cwd"])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        STARTED_WITH.update(sys.modules)
        code = run_probe(request["environ"]) if probe else run_extension(request["environ"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# --------------------------------------------------------------------------- the probe


def run_probe(environ: dict[str, str]) -> int:
    """A forked child that uses grpc for real: 20 unary calls (GetPoints), then a watch stream
    read until it has seen 3 changes of each point in SMX_PROBE_POINTS. Exit 0 when all came."""
    import asyncio

    from smx.client import Credentials, Stubs
    from smx.v1 import point_service_pb2 as spb

    names = environ["SMX_PROBE_POINTS"].split(",")
    creds = Credentials(
        Path(environ["SMX_CA"]), Path(environ["SMX_CERT"]), Path(environ["SMX_KEY"])
    )

    async def main() -> int:
        stubs = Stubs(creds.aio_channel(environ["SMX_TARGET"]))
        try:
            for _ in range(20):
                resp = await stubs.points.GetPoints(spb.GetPointsRequest(names=names), timeout=5)
                assert len(resp.points) == len(names), resp
            seen: dict[str, int] = dict.fromkeys(names, 0)
            stream = stubs.points.WatchPoints(spb.WatchPointsRequest(patterns=names))

            async def read() -> None:
                async for msg in stream:
                    if msg.snapshot or msg.heartbeat:
                        continue
                    for p in msg.points:
                        if p.name in seen:
                            seen[p.name] += 1
                    if min(seen.values()) >= 3:
                        return

            await asyncio.wait_for(read(), 15)
            stream.cancel()
            print(f"probe ok: 20 calls, watch changes {seen}", flush=True)
            return 0
        finally:
            await stubs.channel.close()

    return asyncio.run(main())


# --------------------------------------------------------------------------- the benchmark


# Where a process's private memory (USS) lies, by mapping.
KINDS = ("anon+heap", "grpc .so", "protobuf .so", "libpython", "other files", "stack")


def private_by_kind(pid: int) -> dict[str, int]:
    """Private_Clean + Private_Dirty bytes of `pid` per kind of mapping (/proc/PID/smaps):
    anonymous memory and the brk heap (Python's objects, malloc, thread stacks), grpc's and
    protobuf's extension modules (their relocated data), libpython, other files, the stack."""
    out = dict.fromkeys(KINDS, 0)
    kind = "other files"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:
            path = head[5].strip() if len(head) > 5 else ""
            if not path or path == "[heap]" or path.startswith("[anon"):
                kind = "anon+heap"
            elif path == "[stack]":
                kind = "stack"
            elif "cygrpc" in path:
                kind = "grpc .so"
            elif "/google/" in path:
                kind = "protobuf .so"
            elif "libpython" in path:
                kind = "libpython"
            else:
                kind = "other files"
        elif line.startswith(("Private_Clean:", "Private_Dirty:")):
            out[kind] += int(line.split()[1]) * 1024
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="SDK processes per mode")
    parser.add_argument("--seconds", type=float, default=20.0, help="run before measuring")
    parser.add_argument("--modes", default="ABC", help="which of A, B, C, in this order")
    parser.add_argument("--fork-check", action="store_true", help="grpc after fork, by test")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="every child runs one full gc.collect() 5 s after start (what freeze is for)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-freeze", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main()
    if args.image:
        return image_main(freeze=not args.no_freeze)
    return Bench(args).run()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        # The benchmark's own modules: not in the children (see the module docstring).
        sys.path.insert(0, str(HERE.parent))
        import harness

        self.h = harness
        self.args = args
        self.n = args.n
        self.modes = [m for m in args.modes.upper() if m in "ABC"]
        names = [f"{m.lower()}{i}" for m in self.modes for i in range(self.n)]
        self.watched = ["fk0", "fk1"] if args.fork_check else []
        names += self.watched
        clients = {"admin": ("trusted", ["admin"], [])}
        clients |= {name: ("trusted", ["trusted-extension"], []) for name in names}
        self.site = harness.Site(clients)
        (self.site.home / "run").mkdir(exist_ok=True)
        (self.site.home / "logs").mkdir(exist_ok=True)

    # -- processes

    def environ(self, name: str) -> dict[str, str]:
        from smx.process_env import ProcessEnv, RunPaths

        paths = RunPaths(self.site.home)
        config = paths.config_file(name)
        config.write_text("{}")
        env = ProcessEnv(
            name=name,
            target=self.site.target,
            credentials=self.site.creds(name),
            site="test-site",
            domain="trusted",
            home=self.site.home,
            config_file=config,
            health_file=paths.health_file(name),
        )
        base = {k: v for k in ("PATH", "LANG") if (v := os.environ.get(k))}
        if self.args.collect:
            base[COLLECT_ENV] = "1"
        return {**base, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env.to_environ()}

    def log(self, name: str) -> Path:
        return self.site.home / "logs" / f"{name}.log"

    def start_fresh(self, names: list[str]) -> list[subprocess.Popen[bytes]]:
        procs = []
        for name in names:
            with open(self.log(name), "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(HERE), "--child"],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self.environ(name),
                        cwd=self.site.home,
                        start_new_session=True,
                    )
                )
        return procs

    def start_image(self, freeze: bool, extra_env: dict[str, str] | None = None) -> Image:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
        return Image(freeze, env, self.site.home)

    # -- checks

    def values(self, names: list[str]) -> dict[str, float]:
        """The current value of each process's point (absent: not written yet), as admin."""
        import grpc

        from smx.v1 import point_service_pb2 as spb

        if not hasattr(self, "_admin"):
            self._admin = self.site.sync_stubs("admin")
        out = {}
        for name in names:
            try:
                resp = self._admin.points.GetPoints(
                    spb.GetPointsRequest(names=[f"{name}/{POINT}"]), timeout=5
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                raise
            for p in resp.points:
                if p.value.HasField("double_value"):
                    out[name] = p.value.double_value
        return out

    def modules(self, name: str) -> tuple[int, list[str]]:
        """(modules loaded, those imported after the child's own code began) from its log."""
        for line in self.log(name).read_text(errors="replace").splitlines():
            if line.startswith(MODULES_LINE):
                _, total, _, *rest = line.split(" ")
                return int(total), [m for m in (rest[0] if rest else "").split(",") if m]
        return 0, ["(not reported)"]

    def wait_working(self, names: list[str], timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if len(self.values(names)) == len(names):
                return time.monotonic() - t0
            time.sleep(0.2)
        missing = sorted(set(names) - set(self.values(names)))
        logs = "\n".join(f"--- {n}\n{self.log(n).read_text()[-1500:]}" for n in missing)
        raise SystemExit(f"no point from {missing} in {timeout:g} s\n{logs}")

    # -- one mode

    def measure_mode(self, mode: str) -> dict[str, Any]:
        names = [f"{mode.lower()}{i}" for i in range(self.n)]
        image: Image | None = None
        procs: list[subprocess.Popen[bytes]] = []
        t0 = time.monotonic()
        if mode == "A":
            procs = self.start_fresh(names)
            pids = [p.pid for p in procs]
        else:
            image = self.start_image(freeze=(mode == "B"))
            pids = [image.fork(self.environ(n), self.log(n), self.site.home) for n in names]
        started = time.monotonic() - t0
        try:
            up = self.wait_working(names)
            before = self.values(names)
            time.sleep(max(0.0, self.args.seconds - (time.monotonic() - t0 - started)))
            measured = list(zip(names, pids, strict=True))
            if image is not None:
                measured.append(("image", image.proc.pid))
            rows = [(n, self.h.smaps_rollup(pid)) for n, pid in measured]
            kinds = [(n, private_by_kind(pid)) for n, pid in measured]
            after = self.values(names)
            stale = [n for n in names if after.get(n, 0) <= before.get(n, 0)]
            if stale:
                raise SystemExit(f"mode {mode}: {stale} stopped publishing")
            dead = [n for n, p in zip(names, pids, strict=True) if not _alive(p)]
            if dead:
                raise SystemExit(f"mode {mode}: {dead} exited")
            return {
                "mode": mode,
                "rows": rows,
                "kinds": kinds,
                "modules": [self.modules(n) for n in names],
                "up": up,
                "advanced": min(after[n] - before[n] for n in names),
                "image_line": image.ready if image else "",
            }
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            if image is not None:
                codes = image.close()
                if any(codes):
                    print(f"note: mode {mode} children exited with {codes}", file=sys.stderr)

    # -- fork check

    def fork_check(self) -> list[list[object]]:
        """Probes forked from an image under each GRPC_ENABLE_FORK_SUPPORT setting, while two
        children of another image publish the points the probes watch."""
        rows: list[list[object]] = []
        source = self.start_image(freeze=True)
        try:
            for n in self.watched:
                source.fork(self.environ(n), self.log(n), self.site.home)
            self.wait_working(self.watched)
            env = self.environ("admin")
            env["SMX_PROBE_POINTS"] = ",".join(f"{n}/{POINT}" for n in self.watched)
            for setting in (None, "true", "false"):
                extra = {} if setting is None else {"GRPC_ENABLE_FORK_SUPPORT": setting}
                image = self.start_image(freeze=True, extra_env=extra)
                log = self.site.home / "logs" / f"probe-{setting}.log"
                t0 = time.monotonic()
                try:
                    code = image.probe({**env, **extra}, log, self.site.home)
                finally:
                    image.close()
                last = log.read_text().strip().splitlines() if log.exists() else []
                rows.append(
                    [
                        f"GRPC_ENABLE_FORK_SUPPORT={setting or '(unset)'}",
                        image.ready.split(" ", 2)[2],
                        "ok" if code == 0 else f"FAILED exit {code}",
                        time.monotonic() - t0,
                        (last[-1] if last else "")[:100],
                    ]
                )
        finally:
            codes = source.close()
            if any(codes):
                print(f"note: fork-check sources exited with {codes}", file=sys.stderr)
        return rows

    def image_calls_grpc_init(self) -> str:
        """Whether importing the image's modules starts grpc's core: run the imports with
        GRPC_TRACE=api (every grpc_init is logged), then one channel, for contrast."""
        code = (
            "import importlib, os, sys\n"
            f"for m in {IMAGE_MODULES!r}: importlib.import_module(m)\n"
            "print('imported threads=%d' % len(os.listdir('/proc/self/task')), flush=True)\n"
            "import grpc\n"
            "ch = grpc.insecure_channel('unix:///nonexistent')\n"
            "print('channel threads=%d' % len(os.listdir('/proc/self/task')), flush=True)\n"
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GRPC_TRACE": "api",
            "GRPC_VERBOSITY": "debug",
            "GRPC_PYTHON_DISABLE_ABSL_INIT_LOG": "1",
        }
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        # stdout and stderr interleaved by time is not available: count grpc_init lines in
        # stderr and split at the import's end by running the imports alone once more.
        alone = subprocess.run(
            [sys.executable, "-c", code.split("import grpc\n")[0]],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        during = alone.stderr.count("grpc_init(")
        total = r.stderr.count("grpc_init(")
        return (
            f"  GRPC_TRACE=api: grpc_init calls during the image's imports: {during} "
            f"({alone.stdout.strip()}); after one channel more: {total} "
            f"({r.stdout.strip().splitlines()[-1]})"
        )

    def fork_after_use(self) -> str:
        """What happens when a process that already used a channel forks, and the child uses
        grpc (the default settings): the case the image must never be in."""
        code = (
            "import os, sys, time\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from smx.client import Credentials, Stubs\n"
            "from smx.v1 import point_service_pb2 as spb\n"
            "from pathlib import Path\n"
            "c = Credentials(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))\n"
            "s = Stubs(c.channel(sys.argv[5]))\n"
            "s.points.GetPoints(spb.GetPointsRequest(), timeout=5)\n"
            "threads = len(os.listdir('/proc/self/task'))\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    try:\n"
            "        s2 = Stubs(c.channel(sys.argv[5]))\n"
            "        s2.points.GetPoints(spb.GetPointsRequest(), timeout=5)\n"
            "        os._exit(0)\n"
            "    except BaseException as err:\n"
            "        print('child:', type(err).__name__, str(err)[:120], flush=True)\n"
            "        os._exit(3)\n"
            "_, st = os.waitpid(pid, 0)\n"
            "code = os.waitstatus_to_exitcode(st)\n"
            "print(f'parent threads at fork={threads} child exit={code}')\n"
        )
        creds = self.site.creds("admin")
        out = []
        for setting in (None, "true", "false"):
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            if setting:
                env["GRPC_ENABLE_FORK_SUPPORT"] = setting
            try:
                r = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        code,
                        str(ROOT),
                        str(creds.ca),
                        str(creds.cert),
                        str(creds.key),
                        self.site.target,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    env=env,
                )
                text = (r.stdout + r.stderr).strip().splitlines()
                result = (
                    f"rc={r.returncode}: "
                    + " | ".join(t for t in text if "WARNING: All log" not in t)[:300]
                )
            except subprocess.TimeoutExpired:
                result = "hung (killed after 20 s)"
            out.append(
                f"  fork after a call, GRPC_ENABLE_FORK_SUPPORT={setting or '(unset)'}: {result}"
            )
        return "\n".join(out)

    # -- the whole run

    def run(self) -> int:
        h = self.h
        core = h.BenchCore(self.site)
        results = []
        try:
            print(
                f"fork image: {self.n} idle SDK processes per mode against one core, "
                f"measured {self.args.seconds:g} s after start"
                + (", each child ran one full gc.collect() at 5 s" if self.args.collect else "")
            )
            print(f"machine: {machine()}")
            print()
            for mode in self.modes:
                results.append(self.measure_mode(mode))
            print(self.table(results))
            if self.args.fork_check:
                print()
                print(
                    "grpc in a child forked from an image (grpc, the SDK and stubs imported, no "
                    "channel; gc.freeze): 20 GetPoints, then a WatchPoints stream until 3 "
                    "changes of each of 2 points written by other forked children"
                )
                print(
                    h.fmt_table(
                        ["image environment", "image at fork", "probe", "s", "probe's last line"],
                        self.fork_check(),
                    )
                )
                print()
                print(self.image_calls_grpc_init())
                print(
                    "for contrast, a process that made a call on a channel, then forks; the "
                    "child makes a new channel and one call (sync API):"
                )
                print(self.fork_after_use())
        finally:
            core.stop()
            self.site.cleanup()
        return 0

    def table(self, results: list[dict[str, Any]]) -> str:
        h = self.h
        label = {
            "A": "A fresh interpreters",
            "B": "B forked, gc.freeze",
            "C": "C forked, no freeze",
        }
        lines = []
        summary: list[list[object]] = []
        base_total = None
        for r in results:
            rows = r["rows"]
            kids = [m for n, m in rows if n != "image"]
            image = [m for n, m in rows if n == "image"]
            per = {k: sum(m[k] for m in kids) / len(kids) / MB for k in ("pss", "uss", "rss")}
            total = {k: sum(m[k] for _, m in rows) / MB for k in ("pss", "uss", "rss")}
            if r["mode"] == "A":
                base_total = total
            ratio = f"{total['pss'] / base_total['pss']:.2f}x" if base_total else "-"
            summary.append(
                [
                    label[r["mode"]],
                    len(rows),
                    per["pss"],
                    per["uss"],
                    per["rss"],
                    image[0]["pss"] / MB if image else float("nan"),
                    total["pss"],
                    total["uss"],
                    ratio,
                ]
            )
            detail = [[n, m["pss"] / MB, m["uss"] / MB, m["rss"] / MB] for n, m in rows]
            lines.append(
                f"mode {label[r['mode']]}: all {self.n} points arrived {r['up']:.1f} s after "
                f"start, each advanced >= {r['advanced']:g} during the run"
                + (f"; image: {r['image_line']}" if r["image_line"] else "")
            )
            lines.append(h.fmt_table(["process", "PSS", "USS", "RSS"], detail))
            lines.append("")
        lines.append(
            "private memory (USS, MiB) by mapping: mean per child, and the image "
            "(anon+heap: Python objects, malloc arenas, thread stacks)"
        )
        kind_rows: list[list[object]] = []
        for r in results:
            kids = [k for n, k in r["kinds"] if n != "image"]
            kind_rows.append(
                [f"{r['mode']} child"] + [sum(k[x] for k in kids) / len(kids) / MB for x in KINDS]
            )
            kind_rows += [
                [f"{r['mode']} image"] + [k[x] / MB for x in KINDS]
                for n, k in r["kinds"]
                if n == "image"
            ]
        lines.append(h.fmt_table(["process", *KINDS], kind_rows))
        lines.append("")
        for r in results:
            mods = r["modules"]
            extra = sorted({m for _, new in mods for m in new})
            lines.append(
                f"mode {r['mode']}: modules loaded per child {min(t for t, _ in mods)}-"
                f"{max(t for t, _ in mods)}; imported after its own code began: "
                f"{max(len(new) for _, new in mods)}"
                + (
                    f" ({', '.join(extra[:12])}{', ...' if len(extra) > 12 else ''})"
                    if r["mode"] != "A" and extra
                    else ""
                )
            )
        lines.append("")
        saved = []
        for row in summary[1:] if summary and summary[0][0].startswith("A") else []:
            a_pss, a_uss = summary[0][6], summary[0][7]
            saved.append(
                f"{str(row[0])[:1]} against A: {a_pss - row[6]:.1f} MiB PSS saved in total, "
                f"{(a_pss - row[6]) / self.n:.1f} per SDK process (image included); "
                f"USS {(a_uss - row[7]) / self.n:.1f} per SDK process"
            )
        lines.append(
            f"summary (MiB; {self.n} SDK processes per mode, the image counted in its mode's total)"
        )
        lines.append(
            h.fmt_table(
                [
                    "mode",
                    "procs",
                    "PSS/child",
                    "USS/child",
                    "RSS/child",
                    "image PSS",
                    "total PSS",
                    "total USS",
                    "PSS vs A",
                ],
                summary,
            )
        )
        lines += saved
        return "\n".join(lines)


class Image:
    """The image process, driven through its stdin and stdout."""

    def __init__(self, freeze: bool, env: dict[str, str], cwd: Path) -> None:
        argv = [sys.executable, str(HERE), "--image"] + ([] if freeze else ["--no-freeze"])
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.ready = self.proc.stdout.readline().strip()
        if not self.ready.startswith("ready"):
            raise SystemExit(f"image did not start: {self.ready!r}")
        self.children: list[int] = []

    def fork(self, environ: dict[str, str], log: Path, cwd: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"environ": environ, "log": str(log), "cwd": str(cwd)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        self.children.append(pid)
        return pid

    def probe(self, environ: dict[str, str], log: Path, cwd: Path) -> int:
        """Fork a probe child and wait for it: its exit code."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"environ": environ, "log": str(log), "cwd": str(cwd), "probe": True}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[1])

    def close(self) -> list[int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        line = self.proc.stdout.readline().strip()
        self.proc.wait(30)
        return json.loads(line.split(" ", 1)[1]) if line.startswith("exited") else [-1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    import platform

    return (
        f"{os.cpu_count()} CPUs ({cpu}), {int(mem) / 2**20:.0f} GiB, kernel {platform.release()}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
