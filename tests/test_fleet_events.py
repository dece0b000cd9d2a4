"""The fleet's change stream: per organization, coalesced, never blocking a publisher; across
processes over Redis; and the server-sent events the pages read from it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from conftest import Farm, local_port_answers
from layerfleet.fleet.events import FleetEvents, RedisFleetEvents, Subscription

REDIS_URL = "redis://127.0.0.1:6379/0"


async def test_subscribers_get_their_organizations_changes_coalesced() -> None:
    events = FleetEvents()
    async with events.subscribe(1) as farm_a, events.subscribe(2) as farm_b:
        for _ in range(100):
            events.publish(1, [7, 8])
        events.publish(2, [9])
        events.publish(3, [10])  # nobody follows organization 3
        assert await farm_a.changes(1.0) == {7, 8}
        assert await farm_b.changes(1.0) == {9}
        assert await farm_a.changes(0.05) == set()  # 100 announcements, one read
        assert events.subscriber_count == 2
    assert events.subscriber_count == 0


async def test_a_page_s_stream_cancelled_as_a_change_arrives_stops() -> None:
    # The page's stream loops on changes(); a cancellation landing as the change wakes it must
    # not be lost (asyncio.wait_for loses it on 3.11: the loop would wait out its keep-alive).
    events = FleetEvents()
    for steps_between in range(6):
        async with events.subscribe(1) as subscription:
            async def stream(subscription: Subscription = subscription) -> None:
                while True:
                    await subscription.changes(5.0)

            task = asyncio.create_task(stream())
            await asyncio.sleep(0.01)
            events.publish(1, [3])
            for _ in range(steps_between):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.5)
            assert done, f"the stream outlived its cancellation ({steps_between} steps after the change)"


async def test_a_subscriber_waits_until_something_changes() -> None:
    events = FleetEvents()
    async with events.subscribe(1) as subscription:
        waiting = asyncio.create_task(subscription.changes(5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        events.publish(1, [3])
        assert await asyncio.wait_for(waiting, 1.0) == {3}


@pytest.mark.skipif(not local_port_answers(6379), reason="Redis is not running on 127.0.0.1:6379")
async def test_changes_reach_pages_served_by_another_process_over_redis() -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    first, second = RedisFleetEvents(REDIS_URL, namespace=namespace), RedisFleetEvents(REDIS_URL, namespace=namespace)
    await first.start()
    await second.start()
    try:
        async with first.subscribe(1) as here, second.subscribe(1) as there, second.subscribe(2) as other:
            first.publish(1, [4])
            first.publish(1, [5])
            assert await here.changes(1.0) == {4, 5}  # at once, without the round trip
            assert await there.changes(3.0) == {4, 5}
            assert await other.changes(0.5) == set()
            # A process does not hear its own batches twice.
            await asyncio.sleep(0.5)
            assert await here.changes(0.1) == set()
    finally:
        await first.close()
        await second.close()


async def _events(response: httpx.Response, wanted: int) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            found.append((name, json.loads(line[6:])))
            if len(found) == wanted:
                return found
    return found


async def test_the_stream_sends_changed_cards_of_the_users_organization_only(live_url: str, farm: Farm) -> None:
    owner = await farm.member()
    stranger = await farm.member(organization="Farm B")
    printer = await farm.printer(owner, "Voron")
    theirs = await farm.printer(stranger, "Theirs")
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        signed = await client.post("/accounts/login/", data={"email": owner.user.email, "password": "password-123"})
        assert signed.status_code == 303
        async with client.stream("GET", "/events/fleet") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            reading = asyncio.create_task(_events(response, 2))
            await asyncio.sleep(0.3)
            # Changes made through the API are announced: renaming both printers.
            for target, member in ((theirs, stranger), (printer, owner)):
                renamed = await client.patch(f"/api/v1/printers/{target.id}/", json={"name": "Renamed"},
                                             headers=member.headers)
                assert renamed.status_code == 200
            (hello, _), (kind, data) = await asyncio.wait_for(reading, 10)
    assert hello == "hello" and kind == "printers"
    assert [card["id"] for card in data["cards"]] == [printer.id]
    card = data["cards"][0]
    assert card["name"] == "Renamed" and card["state"] == "Offline" and card["zone"] == "green"
    assert data["removed"] == []


async def test_the_stream_ends_when_the_user_signs_out(
        live_url: str, farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    from layerfleet.web import fleet as fleet_pages

    monkeypatch.setattr(fleet_pages, "KEEPALIVE_SECONDS", 0.2)
    monkeypatch.setattr(fleet_pages, "SESSION_CHECK_SECONDS", 0.3)
    owner = await farm.member()
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        await client.post("/accounts/login/", data={"email": owner.user.email, "password": "password-123"})
        async with client.stream("GET", "/events/fleet") as response:
            reading = asyncio.create_task(_events(response, 3))
            await asyncio.sleep(0.5)
            # Signed out elsewhere (another tab): the session ends on the server.
            async with httpx.AsyncClient(base_url=live_url, cookies=client.cookies, timeout=10) as other_tab:
                assert (await other_tab.post("/accounts/logout/")).status_code == 303
            received = await asyncio.wait_for(reading, 10)
    assert [name for name, _ in received] == ["hello", "signed_out"]  # and then the stream ended


async def test_pages_of_one_organization_share_one_read_per_change(app: Any, farm: Farm) -> None:
    from layerfleet.fleet.models import Printer
    from layerfleet.web.fleet import CardFeed

    owner = await farm.member()
    printer = await farm.printer(owner, "Voron")
    events = FleetEvents()
    feed = CardFeed(app.state.services.sessionmaker, events)
    organization = owner.user.organization_id

    async def five_pages() -> list[tuple[list[dict[str, Any]], list[int]]]:
        return await asyncio.gather(*(feed.cards(organization, {printer.id}) for _ in range(5)))

    first = await five_pages()
    assert feed.reads == 1 and all(cards[0]["name"] == "Voron" for cards, _ in first)

    async def rename(session: Any) -> None:
        (await session.get(Printer, printer.id)).name = "Voron 2.4"
        await session.commit()

    await farm.run(rename)
    assert (await feed.cards(organization, {printer.id}))[0][0]["name"] == "Voron"  # not announced yet
    events.publish(organization, [printer.id])
    second = await five_pages()
    assert feed.reads == 2 and all(cards[0]["name"] == "Voron 2.4" for cards, _ in second)

    # A printer gone (or never of this organization) is "removed" for its pages.
    events.publish(organization, [printer.id + 999])
    assert await feed.cards(organization, {printer.id + 999}) == ([], [printer.id + 999])


@pytest.mark.skipif(not local_port_answers(6379), reason="Redis is not running on 127.0.0.1:6379")
async def test_changes_cross_processes_again_after_the_redis_subscription_is_cut() -> None:
    from test_redis_bus import _cut_subscriptions

    namespace = f"test-{uuid.uuid4().hex[:8]}"
    name = f"lf-{namespace}"
    url = f"{REDIS_URL}?client_name={name}"
    first, second = RedisFleetEvents(url, namespace=namespace), RedisFleetEvents(url, namespace=namespace)
    await first.start()
    await second.start()
    try:
        async with second.subscribe(1) as there:
            assert await _cut_subscriptions(name) == 2
            received: set[int] = set()
            for printer_id in range(1, 50):
                # Published while the subscription may still be down: some are lost, later ones arrive.
                first.publish(1, [printer_id])
                received |= await there.changes(0.3)
                if received:
                    break
            assert received, "the subscription never came back"
    finally:
        await first.close()
        await second.close()
