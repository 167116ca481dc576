"""A child for the fork server's tests: prints what it is (one JSON line), then does what
FORK_PROBE says: ``exit:N`` exits with N, ``raise`` raises, ``wait`` waits for SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main() -> int:
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "sid": os.getsid(0),
                "argv": sys.argv,
                "env": dict(os.environ),
                "cwd": os.getcwd(),
                "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                "path0": sys.path[0],
                "grpc_loaded": "grpc" in sys.modules,
                "main": __name__,
                "optimize": sys.flags.optimize,
                "cmdline": open("/proc/self/cmdline", "rb").read().decode().split("\0"),
            }
        )
    )
    what = os.environ.get("FORK_PROBE", "exit:0")
    if what == "raise":
        raise RuntimeError("the probe failed on purpose")
    if what == "wait":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        print("waiting", flush=True)
        while True:
            time.sleep(0.05)
    return int(what.split(":")[1])


if __name__ == "__main__":
    sys.exit(main())
