"""What the frames of the two controllers mean: their ctrl codes, flags and payload shapes
(docs/ENERGY-ROUTER.md has the tables). Shared by the link and the simulator."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import Frame, pack_floats

__all__ = [
    "BATTERY",
    "CONTROLLERS",
    "INVERTER",
    "Controller",
    "accepts",
    "confirmation",
    "id_answer",
    "id_answerer",
    "id_request",
    "keep_alive",
    "takes",
]

# Flags shared by both controllers
ID = 1
KEEP_ALIVE = 2
EXTRA = 100  # diagnostics, 3 floats
BLACK_START = 110

# Inverter controller (id 1)
INV_MODE = 10  # 1 byte: 0 off, 1 standby, 2 island
INV_MEASUREMENTS = 20  # P, Q, Uac (floats), grid byte
INV_GRID_STATE = 21  # request: nothing; answer: 1 byte
INV_P = 30  # float W
INV_Q = 40  # float var
INV_VDC = 120  # float V
INV_ERROR = 10  # flag of an inverter error frame (its own ctrl)

# Battery+PV controller (id 2)
BAT_MODE = 50  # 1 byte: 0 off, 1 standby
BAT_P = 60  # command: float W; data: SoC, Pbat, Ubat
PV_MODE = 70  # 1 byte: 0 off, 1 MPPT
PV_P = 80  # command: float W limit; data: Ppv, Upv
LOADS = 90  # 1 byte: 0 off, 1 on
BAT_ERROR = 20  # flags of error frames (its own ctrl)
PV_ERROR = 30


@dataclass(frozen=True)
class Controller:
    name: str  # "inverter", "battery"
    id: int  # what it answers to an ID request
    data: int  # ctrl of its data frames
    error: int  # ctrl of its error frames
    command: int  # ctrl of what the computer sends it


INVERTER = Controller("inverter", 1, data=20, error=40, command=10)
BATTERY = Controller("battery", 2, data=21, error=41, command=11)
CONTROLLERS = {c.name: c for c in (INVERTER, BATTERY)}

# (ctrl kind, flag) -> payload length of each frame a controller sends: anything else on the
# line is noise that happened to hold a 0xFE.
_SENT_BY_INVERTER = {
    ("data", ID): 1,
    ("data", KEEP_ALIVE): 0,
    ("data", INV_MODE + 1): 1,
    ("data", INV_MEASUREMENTS): 13,
    ("data", INV_GRID_STATE): 1,
    ("data", INV_P + 1): 1,
    ("data", INV_Q + 1): 1,
    ("data", EXTRA): 12,
    ("data", BLACK_START + 1): 1,
    ("data", INV_VDC): 4,
    ("error", INV_ERROR): 1,
}
_SENT_BY_BATTERY = {
    ("data", ID): 1,
    ("data", KEEP_ALIVE): 0,
    ("data", BAT_MODE + 1): 1,
    ("data", BAT_P): 12,
    ("data", BAT_P + 1): 1,
    ("data", PV_MODE + 1): 1,
    ("data", PV_P): 8,
    ("data", PV_P + 1): 1,
    ("data", LOADS): 1,
    ("data", LOADS + 1): 1,
    ("data", EXTRA): 12,
    ("data", BLACK_START + 1): 1,
    ("error", BAT_ERROR): 1,
    ("error", PV_ERROR): 1,
}
_SENT = {INVERTER.name: _SENT_BY_INVERTER, BATTERY.name: _SENT_BY_BATTERY}
# flag -> payload length of each command a controller takes
_TAKEN = {
    INVERTER.name: {
        ID: 4,
        KEEP_ALIVE: 0,
        INV_MODE: 1,
        INV_GRID_STATE: 0,
        INV_P: 4,
        INV_Q: 4,
        BLACK_START: 0,
    },
    BATTERY.name: {
        ID: 4,
        KEEP_ALIVE: 0,
        BAT_MODE: 1,
        BAT_P: 4,
        PV_MODE: 1,
        PV_P: 4,
        LOADS: 1,
        BLACK_START: 0,
    },
}


def accepts(controller: Controller, frame: Frame) -> bool:
    """Whether `controller` sends frames of this shape."""
    kind = (
        "data"
        if frame.ctrl == controller.data
        else "error"
        if frame.ctrl == controller.error
        else ""
    )
    return _SENT[controller.name].get((kind, frame.flag)) == len(frame.payload)


def takes(controller: Controller, frame: Frame) -> bool:
    """Whether `controller` takes this frame as a command (an ID request under either
    controller's command code)."""
    if frame.flag == ID and frame.ctrl in (INVERTER.command, BATTERY.command):
        return len(frame.payload) == 4
    return frame.ctrl == controller.command and _TAKEN[controller.name].get(frame.flag) == len(
        frame.payload
    )


def id_request(controller: Controller, soc: float = 0.0) -> Frame:
    # The inverter ignores the 4 bytes; the battery controller takes them as its initial SoC.
    return Frame(controller.command, ID, pack_floats(soc))


def id_answerer(frame: Frame) -> Controller | None:
    """The controller whose ID answer `frame` is, if it is one (either controller's: on a port
    given the wrong controller, the other one answers)."""
    for c in (INVERTER, BATTERY):
        if frame == id_answer(c):
            return c
    return None


def id_answer(controller: Controller) -> Frame:
    return Frame(controller.data, ID, bytes((controller.id,)))


def keep_alive(ctrl: int) -> Frame:
    return Frame(ctrl, KEEP_ALIVE)


def confirmation(controller: Controller, flag: int, ok: bool) -> Frame:
    """The controller's answer to command `flag`: flag + 1, byte 1 (done) or 0 (refused)."""
    return Frame(controller.data, flag + 1, bytes((1 if ok else 0,)))
