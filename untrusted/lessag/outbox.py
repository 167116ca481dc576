"""Store and forward: every message the agent publishes goes through the outbox.

- Broker up, no backlog: the message is handed to the MQTT link at once and kept in memory
  until the broker acknowledges it (QoS 1). Nothing is written to disk: an SD card pays a block
  per write.
- Broker away (or not acknowledging: more than `max_inflight` waiting, or one older than
  `ack_timeout`): messages go to an SQLite queue on disk, written in one transaction every
  `flush_every` seconds (with the messages the broker had not acknowledged when it went away).
- Broker back: the queue is sent oldest first at `drain_rate` messages/s while live messages
  go out as they come, so a backlog never holds live data back; a row is deleted once the broker
  acknowledged it (in batches too). Each message keeps the sequence number (publish id) it got
  when it was made, also after a restart, sent as the MQTT 5 user property `seq`. Publish ids
  only grow, across restarts and kill -9 too: the next `SEQ_BLOCK` ids are reserved on disk
  before they are used (one small write per block), so a crash skips ids, never reuses one.
- Refused: a message the broker refuses (MQTT 5 PUBACK reason code >= 0x80, e.g. 135 not
  authorized by its ACL) is not sent again: it is counted in `dropped`, logged once per episode
  and topic (the first refusal, then the count when the topic is accepted again or has had no
  refusal for `REFUSAL_QUIET_S`), and `refusing` says which topics it is happening on.
- Bounds: the queue holds at most `max_size` bytes and nothing older than `max_age`; what they
  drop is the oldest, counted (`dropped`, kept on disk) and logged once per episode.

- A damaged queue (not a database, or failing `PRAGMA quick_check` at start) is renamed aside
  (`queue.db.damaged-<time>`, with its -wal and -shm), logged once, its messages counted as
  dropped (what it can still tell; at least one), and a fresh queue started, the publish ids
  going on above every earlier one: the agent runs on rather than fail at every restart.

A crash (kill -9) loses what was not yet on disk: at most `flush_every` of messages made while
the broker was away, and the messages handed to a live broker but not yet acknowledged.
docs/LESSAG.md, "Store and forward".
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .mqtt_link import MqttLink
from .settings import QueueConfig, size_bytes

__all__ = ["Message", "Outbox"]

log = logging.getLogger(__name__)

ROW_OVERHEAD = 40  # bytes a row costs beyond its topic and payload, for the size bound
DRAIN_BATCH = 500
REFUSAL_QUIET_S = 60.0  # a topic without a refusal this long: its episode is over
SEQ_BLOCK = 1000  # publish ids reserved on disk at a time (a crash skips at most these)


@dataclass
class Message:
    seq: int
    created: float  # unix seconds
    topic: str
    payload: bytes
    on_disk: bool = False
    sent_at: float = 0.0  # monotonic, when handed to the link

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.payload) + ROW_OVERHEAD


@dataclass
class Refusals:
    """An episode of the broker refusing a topic's messages."""

    count: int
    last: float  # monotonic, the latest refusal
    reason: str  # the broker's reason code


class Outbox:
    def __init__(self, link: MqttLink, cfg: QueueConfig, path: Path) -> None:
        self.link = link
        self.cfg = cfg
        self.max_bytes = size_bytes(cfg.max_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = _open(path)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):  # locked, no space, no access: not
                raise  # damage; setting the file aside would lose a good queue
            self.db = _start_afresh(path, err)
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)),"
            " 0), COALESCE(MAX(seq), 0) FROM queue"
        ).fetchone()
        self.queued, self.disk_bytes = int(row[0]), int(row[1]) + ROW_OVERHEAD * int(row[0])
        self.dropped = self._meta("dropped")
        used = (int(row[2]), self._meta("last_seq"), self._meta("reserved"))
        self._next_seq = max(used) + 1
        self._reserved = self._next_seq - 1  # ids up to this one are reserved on disk
        self.pending: list[Message] = []  # to be written to disk
        self.inflight: dict[int, Message] = {}  # mid -> message handed to the link
        self.handed: set[int] = set()  # seqs on disk that the link holds (not to drain again)
        self.acked: list[tuple[int, int]] = []  # (seq, size) on disk, to delete
        self.sent = 0
        self._drained_to = 0  # highest seq read from disk for draining
        self._wake = asyncio.Event()
        self._dropping = False  # an episode of drops is under way (logged once)
        self._dropped_saved = self.dropped  # the count on disk
        self.refusing: dict[str, Refusals] = {}  # topic -> the broker's refusals on it
        link.on_ack = self._acked
        if self.queued:
            log.info("resuming a queue of %d message(s) from %s", self.queued, path)

    @property
    def backlog(self) -> int:
        """Messages waiting for the broker: on disk, about to be, and unacknowledged."""
        return self.queued + len(self.pending)

    # -- publishing -----------------------------------------------------------------------------

    def submit(self, topic: str, payload: bytes) -> int:
        """Queue a message; its publish id."""
        seq = self._next_seq
        self._next_seq += 1
        if seq > self._reserved:
            self._reserve(seq + SEQ_BLOCK - 1)
        msg = Message(seq, time.time(), topic, payload)
        if self._live():
            self._send(msg)
        else:
            self.pending.append(msg)
            if len(self.pending) >= DRAIN_BATCH:
                self._wake.set()
        return seq

    def _live(self) -> bool:
        return self.link.connected and len(self.inflight) < self.cfg.max_inflight

    def _send(self, msg: Message) -> bool:
        mid = self.link.publish(msg.topic, msg.payload, msg.seq)
        if mid is None:
            if not msg.on_disk:
                self.pending.append(msg)
            return False
        msg.sent_at = time.monotonic()
        self.inflight[mid] = msg
        if msg.on_disk:
            self.handed.add(msg.seq)
        self.sent += 1
        return True

    def _acked(self, mid: int, ok: bool, reason: str = "") -> None:
        msg = self.inflight.pop(mid, None)
        if msg is None:
            return
        if not ok:
            self._refused(msg, reason)
        elif msg.topic in self.refusing:
            self._refusals_over(msg.topic, "accepted again")
        if msg.on_disk:
            self.handed.discard(msg.seq)
            self.acked.append((msg.seq, msg.size))
            if len(self.acked) >= DRAIN_BATCH:
                self._wake.set()

    def _refused(self, msg: Message, reason: str) -> None:
        """Refused by the broker (its ACL, a quota): sending it again would be refused again.
        Counted in `dropped`; one log line when a topic's episode starts."""
        self.dropped += 1
        episode = self.refusing.get(msg.topic)
        if episode is None:
            self.refusing[msg.topic] = Refusals(1, time.monotonic(), reason or "refused")
            log.warning(
                "the broker refuses messages on %s (%s): dropped, counted in the dropped point "
                "(%d dropped in all); check the broker's ACL for this client",
                msg.topic,
                self.refusing[msg.topic].reason,
                self.dropped,
            )
        else:
            episode.count += 1
            episode.last = time.monotonic()

    def _refusals_over(self, topic: str, why: str) -> None:
        count = self.refusing.pop(topic).count
        log.info(
            "the broker's refusals on %s are over (%s): %d message(s) refused", topic, why, count
        )

    def refusals(self) -> str:
        """What the broker refuses now, for the health ("" when nothing)."""
        now = time.monotonic()
        for topic, episode in list(self.refusing.items()):
            if now - episode.last > REFUSAL_QUIET_S:
                self._refusals_over(topic, f"none for {REFUSAL_QUIET_S:g}s")
        return "; ".join(
            f"the broker refused {e.count} message(s) on {topic} ({e.reason})"
            for topic, e in self.refusing.items()
        )

    def link_down(self) -> None:
        """What the broker had not acknowledged goes to disk now (the link resends it after
        a reconnect; the disk has it if we die first)."""
        self._to_disk([m for m in self.inflight.values() if not m.on_disk])
        self._wake.set()

    def link_up(self) -> None:
        self._drained_to = 0  # what was handed before stays handed; read the rest again
        self._wake.set()

    # -- the disk -------------------------------------------------------------------------------

    def _reserve(self, upto: int) -> None:
        """Publish ids up to `upto` may be used: on disk (synced, a power cut included) first,
        so a restart after any stop goes on above them."""
        if self.db.in_transaction:  # never the case between calls; be safe
            self.db.execute("COMMIT")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('reserved', ?)", (upto,))
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._reserved = upto

    def _meta(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _to_disk(self, handed: list[Message] | None = None) -> None:
        """One transaction: pending messages (and `handed` ones, which the link holds) in,
        acknowledged ones out, then the bounds."""
        handed = handed or []
        new = [*handed, *self.pending]
        self.pending = []
        if not new and not self.acked and self.dropped == self._dropped_saved:
            return
        db = self.db
        db.execute("BEGIN")
        if new:
            db.executemany(
                "INSERT OR IGNORE INTO queue VALUES (?, ?, ?, ?)",
                [(m.seq, m.created, m.topic, m.payload) for m in new],
            )
            for m in new:
                m.on_disk = True
            self.handed.update(m.seq for m in handed)
            self.queued += len(new)
            self.disk_bytes += sum(m.size for m in new)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (self._next_seq - 1,))
        if self.acked:
            gone = db.executemany(
                "DELETE FROM queue WHERE seq = ?", [(s,) for s, _ in self.acked]
            ).rowcount
            if gone == len(self.acked):
                self.queued -= gone
                self.disk_bytes -= sum(size for _, size in self.acked)
            else:  # some were dropped by the bound meanwhile
                self._recount()
            self.acked = []
        self._bound()
        if self.dropped != self._dropped_saved:  # refused by the broker, or the bounds
            db.execute("INSERT OR REPLACE INTO meta VALUES ('dropped', ?)", (self.dropped,))
            self._dropped_saved = self.dropped
        db.execute("COMMIT")

    def _recount(self) -> None:
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0) FROM queue"
        ).fetchone()
        self.queued, self.disk_bytes = int(row[0]), int(row[1]) + ROW_OVERHEAD * int(row[0])

    def _bound(self) -> None:
        """Drop the oldest beyond `max_size`, and whatever is older than `max_age`."""
        lost = self.db.execute(
            "DELETE FROM queue WHERE created < ?", (time.time() - self.cfg.max_age,)
        ).rowcount
        if lost > 0:
            self._recount()
        while self.disk_bytes > self.max_bytes and self.queued:
            excess = self.disk_bytes - self.max_bytes
            rows = self.db.execute(
                "SELECT seq, LENGTH(topic) + LENGTH(payload) FROM queue ORDER BY seq LIMIT 1000"
            ).fetchall()
            cut, freed = [], 0
            for seq, size in rows:  # the oldest rows that free the excess
                cut.append(seq)
                freed += size + ROW_OVERHEAD
                if freed >= excess:
                    break
            self.db.executemany("DELETE FROM queue WHERE seq = ?", [(s,) for s in cut])
            lost += len(cut)
            self._recount()
        if lost > 0:
            self.dropped += lost
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('dropped', ?)", (self.dropped,))
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "queue over its bound (%s, %gs): dropping the oldest messages "
                    "(%d dropped so far; counted in the dropped point)",
                    self.cfg.max_size,
                    self.cfg.max_age,
                    self.dropped,
                )

    # -- the task -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write to disk every `flush_every`, drain the queue while the broker is up."""
        last_flush = time.monotonic()
        while True:
            if self.link.connected and self.queued > len(self.handed):
                await self._drain_some()
            else:
                try:
                    async with asyncio.timeout(self.cfg.flush_every):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
            now = time.monotonic()
            if now - last_flush >= self.cfg.flush_every or len(self.pending) >= DRAIN_BATCH:
                self._spill_stuck(now)
                self._to_disk()
                last_flush = now
                if self._dropping and not self.queued:
                    log.info("queue empty again; %d message(s) dropped in all", self.dropped)
                    self._dropping = False

    def _spill_stuck(self, now: float) -> None:
        """Messages the broker has not acknowledged for `ack_timeout` are put on disk too."""
        stuck = [
            m
            for m in self.inflight.values()
            if not m.on_disk and now - m.sent_at > self.cfg.ack_timeout
        ]
        if stuck:
            log.warning("%d message(s) unacknowledged for %gs", len(stuck), self.cfg.ack_timeout)
            self._to_disk(stuck)

    async def _drain_some(self) -> None:
        """Send the next rows, oldest first, at `drain_rate`, never past `max_inflight`."""
        if self.pending:
            self._to_disk()  # in order: what waited in memory goes behind what is on disk
        rows = self.db.execute(
            "SELECT seq, created, topic, payload FROM queue WHERE seq > ? ORDER BY seq LIMIT ?",
            (self._drained_to, DRAIN_BATCH),
        ).fetchall()
        if not rows:
            self._drained_to = 0
            await asyncio.sleep(self.cfg.flush_every / 4)
            return
        interval = 1.0 / self.cfg.drain_rate
        next_at = time.monotonic()
        for seq, created, topic, payload in rows:
            self._drained_to = seq
            if seq in self.handed:
                continue
            while len(self.inflight) >= self.cfg.max_inflight and self.link.connected:
                await asyncio.sleep(0.01)
            if not self.link.connected:
                return
            self._send(Message(seq, created, topic, payload, on_disk=True))
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # far behind (a slow disk): do not burst
        if self.acked:
            self._to_disk()

    def close(self) -> None:
        """At a clean stop: everything not acknowledged is on disk."""
        self._to_disk([m for m in self.inflight.values() if not m.on_disk])
        # The ids of this run's block not used yet: the next start uses them (no gap).
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('reserved', ?)", (self._next_seq - 1,))
        self.db.close()


PLAUSIBLE = 2**53  # beyond, a number read from a damaged file is damage, not a count

SCHEMA = (
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY, created REAL,"
    " topic TEXT, payload BLOB);"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);"
)


def _open(path: Path) -> sqlite3.Connection:
    """The queue, checked (`quick_check`: a damaged file raises DatabaseError here, not later)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.executescript(SCHEMA)
        verdict = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
        if verdict != ["ok"]:
            first = " ".join(verdict[0].split())[:160]  # the first problem is enough
            raise sqlite3.DatabaseError(f"quick_check: {first}")
    except BaseException:
        db.close()
        raise
    return db


def _start_afresh(path: Path, err: sqlite3.DatabaseError) -> sqlite3.Connection:
    """Set a damaged queue aside and start a new one; what the old one held counts as dropped
    (as far as it can still tell: at least one message), and publish ids go on above its."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{path}{suffix}")
        if old.exists():
            old.replace(Path(f"{aside}{suffix}"))
    queued, dropped, last_seq = _salvage(aside)
    lost = max(queued, 1)
    log.error(
        "queue %s is damaged (%s): set aside as %s, a new queue started; %s counted as dropped",
        path,
        err,
        aside.name,
        f"the {queued} message(s) it held" if queued else "its messages (how many unknown: one)",
    )
    db = _open(path)
    # Publish ids above every earlier one (consumers drop a seq they have seen): the old
    # file's if it can still say, else the clock's milliseconds, far beyond a counter's.
    next_seq = max(last_seq, int(time.time() * 1000))
    with db:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('dropped', ?)", (dropped + lost,))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('last_seq', ?)", (next_seq,))
    return db


def _salvage(path: Path) -> tuple[int, int, int]:
    """(rows queued, dropped so far, highest publish id) of a damaged queue, as far as it can
    still tell: 0 where it cannot, or where a value cannot be a counter's (damage)."""
    found: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0, 0, 0
    try:
        for sql in (
            "SELECT 'queued', COUNT(*) FROM queue UNION ALL SELECT 'max_seq', MAX(seq) FROM queue",
            "SELECT key, value FROM meta WHERE key IN ('dropped', 'last_seq', 'reserved')",
        ):
            try:
                for key, value in db.execute(sql).fetchall():
                    if isinstance(value, int) and 0 <= value <= PLAUSIBLE:
                        found[str(key)] = value
            except sqlite3.Error:
                continue
    finally:
        db.close()
    last_seq = max(found.get("max_seq", 0), found.get("last_seq", 0), found.get("reserved", 0))
    return found.get("queued", 0), found.get("dropped", 0), last_seq
