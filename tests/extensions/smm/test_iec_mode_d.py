"""Mode D as real push meters send it: no STX/ETX/BCC, with or without the blank line after
the identification, CR LF or LF, garbage before and between telegrams; the parser, the client
on a pty, and the device in a real core."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extensions.sdk import Extension
from extensions.sdk.testing import TestSite, until
from extensions.smm.config import IecMeterConfig
from extensions.smm.iec62056_21 import (
    BccError,
    FramingError,
    IecError,
    bcc,
    crc16,
    parse_identification,
    parse_push_telegram,
)
from extensions.smm.iec_client import IecClient
from extensions.smm.iec_device import IecMeterDevice
from extensions.smm.iec_simulator import IecSimulator, SimMeter
from extensions.smm.obis import map_datasets
from smx.v1 import point_pb2 as ppb
from smx.v1 import point_service_pb2 as spb

FIXTURES = Path(__file__).parent / "fixtures"
EHZ = (FIXTURES / "written" / "ehz_mode_d_unframed.txt").read_bytes()
IDENT, _, REST = EHZ.partition(b"\r\n\r\n")
DATA = REST  # data lines then "! CR LF"
FAST = {"char_timeout": 0.3, "answer_timeout": 0.4, "reaction_time": 0.05}

EXPECTED = {
    "1-0:0.0.0*255": ("1EMH0012345678", ""),
    "1-0:96.1.0*255": ("0012345678", ""),
    "1-0:1.8.0*255": ("000123.4567", "kWh"),
    "1-0:2.8.0*255": ("000001.2345", "kWh"),
    "1-0:16.7.0*255": ("000345.67", "W"),
    "1-0:32.7.0*255": ("230.1", "V"),
    "1-0:31.7.0*255": ("001.23", "A"),
}


def _framed(data: bytes = DATA) -> bytes:
    body = data + b"\x03"
    return IDENT + b"\r\n\x02" + body + bytes([bcc(body)])


def _check(raw: bytes, **kw) -> None:
    ident, sets = parse_push_telegram(raw, **kw)
    assert (ident.manufacturer, ident.baud_char, ident.ident) == ("EMH", "5", "eHZ-HW8E2AWL")
    assert {s.address: (s.value.value, s.value.unit) for s in sets} == EXPECTED
    assert [s.address for s in sets] == list(EXPECTED)


VARIANTS = {
    "unframed": EHZ,
    "no_blank": IDENT + b"\r\n" + DATA,
    "lf": EHZ.replace(b"\r\n", b"\n"),
    "lf_no_blank": (IDENT + b"\r\n" + DATA).replace(b"\r\n", b"\n"),
    "framed": _framed(),
    "stx_no_etx": IDENT + b"\r\n\r\n\x02" + DATA,
    "garbage_before": b"\x00\xff!!\r\n)(junk/?" + EHZ,
    "garbage_slash_line_before": b"/garbage\r\n" + EHZ,
}


@pytest.mark.parametrize("raw", VARIANTS.values(), ids=VARIANTS.keys())
def test_push_telegram_variants_parse_exactly(raw):
    _check(raw)


def test_framed_telegram_bcc_is_still_checked():
    good = _framed()
    _check(good, require_bcc=True)
    with pytest.raises(BccError, match="BCC mismatch"):
        parse_push_telegram(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(FramingError, match="without its BCC"):
        parse_push_telegram(good[:-1])
    with pytest.raises(FramingError, match="STX but no ETX"):
        parse_push_telegram(IDENT + b"\r\n\x02" + DATA, require_bcc=True)
    _check(EHZ, require_bcc=True)  # an unframed telegram has no BCC to require


def test_incomplete_or_bad_telegrams_are_framing_errors():
    for bad in (
        EHZ[:-3],  # no "!" line
        IDENT,  # identification only
        b"no slash at all",
        EHZ.replace(b"(230.1*V)", b"(230.1*V"),
        EHZ + b"1.8.0(1)\r\n",  # data after the "!"
    ):
        with pytest.raises(FramingError):
            parse_push_telegram(bad)


_valid = EHZ


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(st.sampled_from([b"/", b"!", b"\r", b"\n", b"\x02", b"\x03", b"(", b"x"])).map(
            b"".join
        ),
        st.tuples(st.integers(0, len(_valid) - 1), st.binary(max_size=8), st.integers(0, 8)).map(
            lambda t: _valid[: t[0]] + t[1] + _valid[t[0] + t[2] :]
        ),
    ),
    st.booleans(),
)
def test_fuzz_push_parser_raises_only_its_own_errors(data, require_bcc):
    try:
        _, sets = parse_push_telegram(data, require_bcc=require_bcc)
    except IecError:
        return
    map_datasets(sets)


# -- through the simulator on a pty ---------------------------------------------------------------


@pytest.mark.parametrize("framing", ["unframed", "no_blank", "lf", "framed"])
def test_client_listens_to_each_push_framing(framing):
    meter = SimMeter(EHZ, drift=False)
    with IecSimulator(
        meter, mode="D", initial_baud=9600, push_interval=0.3, push_framing=framing
    ) as sim:
        sim.push_garbage = b"\x00\x7f)(#/!\r\n/x\r\n" if framing != "framed" else b""
        client = IecClient(sim.port, mode="D", initial_baud=9600, **FAST)
        for _ in range(2):  # garbage before the first telegram and between telegrams
            readout = client.listen(timeout=3)
            assert readout.identification.ident == "eHZ-HW8E2AWL"
            got = {s.address: (s.value.value, s.value.unit) for s in readout.datasets}
            assert got == EXPECTED
        client.close()


# -- the device in a real core --------------------------------------------------------------------


async def _points(site, names):
    resp = await site.stubs("admin").points.GetPoints(spb.GetPointsRequest(names=names))
    got = {p.name: p for p in resp.points}
    if len(got) == len(names) and all(p.quality == ppb.QUALITY_GOOD for p in got.values()):
        return got
    return None


async def test_unframed_push_meter_points_are_published():
    sim = IecSimulator(
        SimMeter(EHZ, drift=False),
        mode="D",
        initial_baud=9600,
        push_interval=0.3,
        push_framing="unframed",
    ).start()
    sim.push_garbage = b"\xff\x00noise"
    with TestSite({"smm": ("trusted", ["trusted-extension"], [])}) as site:
        device = IecMeterDevice(
            IecMeterConfig(
                port=sim.port, mode="D", initial_baud=9600, interval=0.3, timezone="UTC", **FAST
            )
        )
        ext = Extension(site.env("smm"))
        ext.declare(device.specs(["P", "Ap", "Am", "U1", "I1"]))
        ext.add_device(device)
        await ext.start()
        try:
            names = ["smm/P", "smm/Ap", "smm/Am", "smm/U1", "smm/I1"]
            got = await until(lambda: _points(site, names), timeout=20)
            values = {n: p.value.double_value for n, p in got.items()}
            assert values == pytest.approx(
                {
                    "smm/P": 345.67,
                    "smm/Ap": 123.4567,
                    "smm/Am": 1.2345,
                    "smm/U1": 230.1,
                    "smm/I1": 1.23,
                }
            )
            assert got["smm/P"].unit == "W"
        finally:
            await ext.stop()
            sim.stop()


# -- DSMR P1: mode D with a CRC after the "!" ----------------------------------------------------

AM550 = (FIXTURES / "iskra_am550" / "readout.txt").read_bytes()


def test_crc16_is_crc16_arc():
    assert crc16(b"123456789") == 0xBB3D  # the catalogued check value of CRC-16/ARC
    assert AM550.endswith(b"!56DD\r\n") and crc16(AM550[: AM550.rindex(b"!") + 1]) == 0x56DD


def test_dsmr_telegram_crc_is_checked():
    ident, sets = parse_push_telegram(AM550)
    assert (ident.manufacturer, ident.enhanced, ident.ident) == ("ISK", "2", "M550T-1012")
    assert sets[-1].address == "0-2:24.2.1" and len(sets) == 38
    bad = AM550.replace(b"(00.111*kW)", b"(00.112*kW)")
    with pytest.raises(BccError, match="CRC mismatch: computed [0-9A-F]{4}, received 56DD"):
        parse_push_telegram(bad)
    lowercase = AM550.replace(b"!56DD", b"!56dd")
    assert parse_push_telegram(lowercase)[1] == sets
    with pytest.raises(FramingError, match="does not end with the '!' line"):
        parse_push_telegram(AM550.replace(b"!56DD", b"!56D"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"/ABC5\\@MT691-1", ("ABC", "5", "@", "MT691-1")),  # enhanced capabilities
        (b"/ISk5\\2MT382-1000", ("ISk", "5", "2", "MT382-1000")),
        (b"/KMP5 KA6U001660297912", ("KMP", "5", "", " KA6U001660297912")),  # 17 > 16
    ],
)
def test_identifications_as_meters_send_them(line, expected):
    ident = parse_identification(line + b"\r\n")
    assert (ident.manufacturer, ident.baud_char, ident.enhanced, ident.ident) == expected
    assert ident.line == line + b"\r\n"


def test_each_listen_gives_the_newest_telegram_not_a_buffered_old_one():
    """A meter pushes every 0.2 s and is read every 3 s: what a read returns was sent after
    the read began (a kept buffer handed out ever older telegrams as current)."""
    clocked = b"/EMH5eHZ\r\n\r\n1-0:0.9.1(120000)\r\n1-0:0.9.2(240101)\r\n1-0:1.8.0(1*kWh)\r\n!\r\n"
    meter = SimMeter(clocked, drift=False)  # the simulator writes its clock into 0.9.1/0.9.2
    with IecSimulator(meter, mode="D", initial_baud=9600, push_interval=0.2) as sim:
        client = IecClient(sim.port, mode="D", initial_baud=9600, read_timeout=5)
        try:
            for _ in range(3):
                time.sleep(3.0)
                readout = client.listen()
                sent = map_datasets(readout.datasets).meter_time
                assert sent is not None
                assert time.time() - sent.timestamp() < 2.0  # hhmmss: up to 1 s coarse
        finally:
            client.close()


def test_a_dsmr_4_or_5_telegram_without_its_crc_is_refused():
    """DSMR 4/5 lines are 8N1: without parity the CRC is the only check, and these meters
    always send one, so a telegram that lost it (bytes dropped by an adapter) is refused."""
    stripped = AM550.replace(b"!56DD", b"!")
    with pytest.raises(FramingError, match=r"DSMR 5 telegram without its CRC"):
        parse_push_telegram(stripped)
    assert parse_push_telegram(stripped, require_crc=False)[1] == parse_push_telegram(AM550)[1]
    with pytest.raises(FramingError, match="without its CRC"):
        parse_push_telegram(EHZ, require_crc=True)  # forced for a meter without a version
    _check(EHZ)  # an eHZ sends none: accepted by default


@pytest.mark.parametrize(
    "recording",
    [
        pytest.param(AM550, id="dsmr-crc"),
        pytest.param(AM550.replace(b"\r\n", b"\n"), id="lf-only"),
        pytest.param(AM550[AM550.index(b"1-3:0.2.8") : AM550.index(b"!")], id="data-lines-only"),
        pytest.param(AM550[: AM550.index(b"!")], id="no-end-mark"),
    ],
)
def test_the_simulator_takes_recordings_as_they_come(recording):
    """With or without identification line, framing, CRC or trailing "!", CR LF or LF: the
    simulator replays the data lines with live values in a telegram that parses."""
    meter = SimMeter(recording, drift=False)
    sim = IecSimulator(meter, mode="D", push_framing="dsmr")  # with its CRC: DSMR 5
    try:
        ident, sets = parse_push_telegram(sim.telegram(meter))
    finally:
        sim.stop()
    assert len(sets) == 38
    assert {s.address: s.value.value for s in sets}["1-0:1.8.1"] == "002130.115"
    assert ident.manufacturer in ("ISK", "SIM")
