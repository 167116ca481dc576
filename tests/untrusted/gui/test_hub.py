"""The fan-out: one watch's updates reach every page; a page that was not listening gets the
latest value of each changed point once, not every change in between."""

from __future__ import annotations

from smx.sdk import PointUpdate
from untrusted.gui.hub import Hub
from untrusted.gui.settings import OverviewConfig


def p(name: str, value: float, revision: int) -> PointUpdate:
    return PointUpdate(name, value, "W", "GOOD", 1000.0 + revision, revision)


async def test_every_page_gets_the_latest_of_what_changed_once():
    hub = Hub(OverviewConfig(), max_viewers=2)
    hub.update(p("smm/P", 100.0, 1))
    first, second = hub.join(), hub.join()
    assert first is not None and second is not None
    assert hub.join() is None  # a third page is refused

    opening = await first.next_message(1.0)
    assert opening is not None and [x["value"] for x in opening["points"]] == [100.0]

    for revision, value in enumerate([200.0, 300.0, 400.0], start=2):
        hub.update(p("smm/P", value, revision))
    hub.update(p("ess/P", -50.0, 5))
    changed = await first.next_message(1.0)
    assert changed is not None
    assert {x["name"]: x["value"] for x in changed["points"]} == {"smm/P": 400.0, "ess/P": -50.0}
    assert changed["core"] is True  # values from the watch: the core is there
    assert await first.next_message(0.05) is None  # nothing new since

    # The second page never read: it gets the same latest values, in one message.
    late = await second.next_message(1.0)
    assert late is not None and {x["name"] for x in late["points"]} == {"smm/P", "ess/P"}
    grid = next(part for part in late["overview"] if part["key"] == "grid")
    assert grid["words"] == "importing 400 W from the grid"


async def test_losing_the_core_reaches_every_page_and_a_leaving_page_frees_its_place():
    hub = Hub(OverviewConfig(), max_viewers=1)
    hub.update(p("smm/P", 100.0, 1))
    page = hub.join()
    assert page is not None
    await page.next_message(1.0)
    hub.set_core_connected(False)
    lost = await page.next_message(1.0)
    assert lost is not None and lost["core"] is False and lost["points"] == []
    hub.leave(page)
    assert hub.join() is not None
