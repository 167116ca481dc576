"""TLS with a configured certificate, and the hash-password command."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
from pathlib import Path

from websockets.asyncio.client import connect

from extensions.sdk.testing import TestSite
from tests.untrusted.gui.conftest import PASSWORD, PASSWORD_HASH, ROOT, gui_process, self_signed
from untrusted.gui.passwords import verify_password


async def test_with_a_certificate_it_speaks_https_and_says_so(site: TestSite, tmp_path: Path):
    cert, key = self_signed(tmp_path)
    config = {"tls_cert": str(cert), "tls_key": str(key), "password_hash": PASSWORD_HASH}
    with gui_process(site, **config) as gui:
        context = ssl.create_default_context(cafile=str(cert))

        def get(path: str) -> http.client.HTTPResponse:
            conn = http.client.HTTPSConnection("127.0.0.1", gui.port, context=context, timeout=10)
            conn.request("GET", path, headers={"Host": gui.host})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            return resp

        page = get("/")
        assert page.status == 200
        assert page.getheader("Strict-Transport-Security", "").startswith("max-age=")
        origin = f"https://{gui.host}"
        async with connect(f"wss://{gui.host}/ws/login", origin=origin, ssl=context) as ws:
            await ws.send(json.dumps({"password": PASSWORD}))
            ticket = json.loads(await ws.recv())["ticket"]
        cookie = get(f"/session?ticket={ticket}").getheader("Set-Cookie", "")
        assert "; Secure" in cookie and "HttpOnly" in cookie  # never sent over plain HTTP
        # Plain HTTP gets nothing from it.
        plain = http.client.HTTPConnection("127.0.0.1", gui.port, timeout=10)
        try:
            plain.request("GET", "/")
            answered = plain.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            answered = False
        assert not answered


def test_hash_password_makes_a_hash_that_checks_the_password():
    made = subprocess.run(
        [sys.executable, "-m", "untrusted.gui", "hash-password"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    stored = made.stdout.strip()
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("a long enough password", stored)
    assert not verify_password("another password", stored)


def test_hash_password_refuses_a_short_password():
    made = subprocess.run(
        [sys.executable, "-m", "untrusted.gui", "hash-password"],
        input="short\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert made.returncode == 2 and "at least 8 characters" in made.stderr
