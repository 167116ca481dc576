"""The GUI's config table as the SDK parses it: a LAN-reachable GUI always needs a login, and
the hosts and origins it answers follow from `listen`, `hosts` and TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from smx.sdk import SetupError, parse_settings
from tests.support.site import ROOT
from tests.untrusted.gui.conftest import PASSWORD_HASH, self_signed
from untrusted.gui.settings import GuiConfig

WHERE = "agents.gui.config"


def parsed(**table: Any) -> GuiConfig:
    cfg = parse_settings(GuiConfig, table, where=WHERE, base_dir=Path("/site"))
    cfg.check(WHERE)
    return cfg


def test_a_lan_address_needs_a_password_and_then_requires_a_login():
    with pytest.raises(SetupError, match=r"agents.gui.config.listen: 192.168.1.5:8080 is reach"):
        parsed(listen="192.168.1.5:8080")
    cfg = parsed(listen="192.168.1.5:8080", password_hash=PASSWORD_HASH)
    assert cfg.login_required and not cfg.address.loopback


def test_loopback_needs_no_login_unless_a_password_is_set():
    assert not parsed().login_required
    assert parsed(password_hash=PASSWORD_HASH).login_required


def test_unknown_and_malformed_keys_name_themselves():
    with pytest.raises(SetupError, match=r"agents.gui.config.max_client: unknown key"):
        parsed(max_client=3)
    with pytest.raises(SetupError, match=r"agents.gui.config.listen: .*host:port"):
        parsed(listen="8080")
    with pytest.raises(SetupError, match=r"agents.gui.config.listen: .*IP address"):
        parsed(listen="usm.local:8080")
    with pytest.raises(SetupError, match=r"agents.gui.config.overview.gird: unknown key"):
        parsed(overview={"gird": ["smm/P"]})
    with pytest.raises(SetupError, match=r"agents.gui.config.overview.pv: invalid pattern"):
        parsed(overview={"pv": ["pv/***"]})
    with pytest.raises(SetupError, match=r"tls_cert, tls_key: give both"):
        parsed(tls_cert="gui.crt")


def test_tls_files_must_exist_and_be_a_certificate_and_its_key(tmp_path: Path):
    cert, key = tmp_path / "gui.crt", tmp_path / "gui.key"
    with pytest.raises(SetupError, match=r"agents.gui.config.tls_cert: no file"):
        parsed(tls_cert=str(cert), tls_key=str(key))
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(SetupError, match=r"agents.gui.config.tls_cert, tls_key: cannot use"):
        parsed(tls_cert=str(cert), tls_key=str(key))


def test_the_hosts_and_origins_it_answers(tmp_path: Path):
    cert, key = self_signed(tmp_path)
    cfg = parsed(listen="127.0.0.1:8080", hosts=["usm.local"])
    assert {"127.0.0.1:8080", "localhost:8080", "usm.local:8080"} <= cfg.allowed_hosts()
    assert "http://usm.local:8080" in cfg.allowed_origins()
    assert "http://evil.example:8080" not in cfg.allowed_origins()
    tls = parsed(
        listen="10.0.0.2:443",
        password_hash=PASSWORD_HASH,
        tls_cert=str(cert),
        tls_key=str(key),
    )
    assert {"10.0.0.2", "10.0.0.2:443"} <= tls.allowed_hosts()  # the default port may be left out
    assert tls.allowed_origins() == {"https://10.0.0.2", "https://10.0.0.2:443"}
    assert "localhost:443" not in tls.allowed_hosts()  # not on loopback


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check as another user")
def test_a_tls_key_the_guis_user_cannot_read_names_the_user_and_the_fix():
    # Under `smx run` as root the GUI is a user of its own; a key copied in as root is not its.
    folder = Path(tempfile.mkdtemp())  # 0700, as pytest's tmp_path's parents: nobody enters
    folder.chmod(0o755)
    cert, key = self_signed(folder)
    cert.chmod(0o644)
    key.chmod(0o600)
    table = {"listen": "127.0.0.1:8443", "tls_cert": str(cert), "tls_key": str(key)}
    # Everything imported as root first: the interpreter may live where nobody cannot read.
    script = (
        "import os, pwd, sys; from pathlib import Path\n"
        "from smx.sdk import SetupError, parse_settings\n"
        "from untrusted.gui.settings import GuiConfig\n"
        f"cfg = parse_settings(GuiConfig, {table!r}, where='w', base_dir=Path('/'))\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n    cfg.check('w')\nexcept SetupError as err:\n    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    shutil.rmtree(folder)
    assert f"w.tls_key: cannot read {key} as user" in out.stdout, out
    assert "give it to this process (`chown" in out.stdout, out
