"""Passwords and sessions, on a clock the test moves."""

from __future__ import annotations

from untrusted.gui.passwords import check_hash_format, hash_password, verify_password
from untrusted.gui.sessions import Tokens


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_password_matches_its_hash_only():
    stored = hash_password("s3cret pass", n=2**10)
    assert check_hash_format(stored) is None
    assert verify_password("s3cret pass", stored)
    assert not verify_password("s3cret pasS", stored)
    assert hash_password("s3cret pass", n=2**10) != stored  # salted


def test_a_hash_with_a_ruinous_cost_is_refused():
    stored = hash_password("x" * 8, n=2**10).replace("$1024$", "$1048576$", 1)
    assert "out of range" in (check_hash_format(stored) or "")


def test_a_session_ends_at_its_lifetime_and_a_ticket_is_used_once():
    clock = Clock()
    sessions = Tokens(lifetime=60.0, limit=2, clock=clock)
    token = sessions.issue()
    assert sessions.valid(token) and not sessions.valid("forged") and not sessions.valid(None)
    clock.now = 61.0
    assert not sessions.valid(token)
    tickets = Tokens(lifetime=30.0, limit=2, clock=clock)
    ticket = tickets.issue()
    assert tickets.redeem(ticket) and not tickets.redeem(ticket)


def test_sessions_are_bounded_the_oldest_goes():
    sessions = Tokens(lifetime=60.0, limit=2, clock=Clock())
    first, second, third = sessions.issue(), sessions.issue(), sessions.issue()
    assert not sessions.valid(first) and sessions.valid(second) and sessions.valid(third)
