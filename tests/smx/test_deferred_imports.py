"""smx.deferred_imports: what websockets and paho-mqtt import and never use stays out of a process
until something uses it, and then works as if it had been imported. Each case runs in a fresh
interpreter (the test process has these modules loaded already)."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(code: str) -> dict:
    """The JSON that `code` (run after `import json, sys`) prints."""
    out = subprocess.run(
        [sys.executable, "-c", f"import json, sys\n{code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _real(name: str) -> str:
    """Python for: is the module named by expression `name` really loaded (not absent, not the
    stand-in)?"""
    stand_in = f"'loaded on first use' in (sys.modules[{name}].__doc__ or '')"
    return f"({name} in sys.modules and not {stand_in})"


HEAVY = ("importlib.metadata", "urllib.request", "zipfile", "csv", "http.client")


def test_the_sdk_keeps_what_websockets_and_paho_load_for_nothing_out():
    loaded = _run(
        "import smx.sdk, websockets.asyncio.server, websockets.asyncio.client, paho.mqtt.client\n"
        f"print(json.dumps({{m: {_real('m')} for m in {HEAVY!r}}}))"
    )
    assert loaded == dict.fromkeys(HEAVY, False)


def test_a_deferred_module_loads_on_first_use_and_then_is_the_real_one():
    result = _run(
        "from smx import deferred_imports\n"
        "import importlib, importlib.metadata, urllib.request\n"
        "stand_in = sys.modules['importlib.metadata']\n"
        "before = 'zipfile' in sys.modules\n"
        "version = importlib.metadata.version('grpcio')\n"
        "from importlib.metadata import version as by_from\n"
        "real = sys.modules['importlib.metadata']\n"
        "print(json.dumps({\n"
        "  'before': before, 'version': version, 'same': by_from('grpcio') == version,\n"
        "  'replaced': real is not stand_in and importlib.metadata is real,\n"
        "  'has_attr': hasattr(urllib.request, 'proxy_bypass'),\n"
        f"  'urllib_real': {_real(repr('urllib.request'))},\n"
        "}))"
    )
    import importlib.metadata

    assert result == {
        "before": False,
        "version": importlib.metadata.version("grpcio"),
        "same": True,
        "replaced": True,
        "has_attr": True,
        "urllib_real": True,
    }


def test_a_deferred_module_is_found_as_itself_without_being_loaded():
    """importlib.util.find_spec answers for a stand-in with the real module's spec (a library
    asking whether a module exists must not be told it does not), and loads nothing."""
    result = _run(
        "import importlib.util, smx.sdk\n"
        "spec = importlib.util.find_spec('urllib.request')\n"
        f"print(json.dumps([spec.name, spec.origin, {_real(repr('urllib.request'))}]))"
    )
    import urllib.request

    assert result == ["urllib.request", urllib.request.__file__, False]


def test_a_module_loaded_already_is_left_alone():
    result = _run(
        "import importlib.metadata as real\n"
        "from smx import deferred_imports\n"
        "print(json.dumps(sys.modules['importlib.metadata'] is real))"
    )
    assert result is True


def test_a_websocket_connection_without_a_proxy_loads_no_urllib_request():
    """The OCPP proxy's SCADA connection (proxy=None) and the GUI's server: a real handshake and
    one message over loopback, and urllib.request is still the stand-in."""
    result = _run(
        "import asyncio, smx.sdk\n"
        "from websockets.asyncio.server import serve\n"
        "from websockets.asyncio.client import connect\n"
        "async def echo(ws):\n"
        "    await ws.send(await ws.recv())\n"
        "async def main():\n"
        "    async with serve(echo, '127.0.0.1', 0) as server:\n"
        "        port = server.sockets[0].getsockname()[1]\n"
        "        async with connect(f'ws://127.0.0.1:{port}', proxy=None) as ws:\n"
        "            await ws.send('hi')\n"
        "            return await ws.recv()\n"
        "reply = asyncio.run(main())\n"
        f"print(json.dumps([reply, {_real(repr('urllib.request'))}]))"
    )
    assert result == ["hi", False]
