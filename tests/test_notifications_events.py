"""Where events are raised: each emitter records its event in the transaction of its cause,
with what the message needs (heaters, an agent gone while printing, a failed slice, PrintWatch's
notify call)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from agent_helpers import until
from conftest import BACKENDS, IDLE, PRINTING, Farm
from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role
from layerfleet.agents import lifecycle
from layerfleet.agents.gateway import AgentGateway
from layerfleet.agents.liveness import LivenessSweep, mark_silent_offline, raise_offline_while_printing
from layerfleet.database import create_engine, create_sessionmaker, downgrade, migrate, utcnow
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer
from layerfleet.library.models import Build, SettingsPreset, SliceJob, SliceStatus
from layerfleet.library.slice_jobs import SliceRunner
from layerfleet.notifications.models import NotificationEvent, OutboxEvent
from layerfleet.prints.models import Print
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import JobState, PrintJob
from test_migrations import own_postgres_database
from test_notifications import make_target
from test_printwatch import PRINTER, issue, post, register


async def recorded(farm: Farm) -> list[OutboxEvent]:
    async def get(session: Any) -> list[OutboxEvent]:
        return list((await session.execute(select(OutboxEvent).order_by(OutboxEvent.id))).scalars())

    return await farm.run(get)  # type: ignore[no-any-return]


def heaters(tool: tuple[float, float], bed: tuple[float, float]) -> dict[str, Any]:
    return {**PRINTING, "temperatures": {"tool0": {"actual": tool[0], "target": tool[1]},
                                         "bed": {"actual": bed[0], "target": bed[1]}}}


def test_heater_crossings_are_found_once() -> None:
    heating = heaters((150, 215), (40, 60))
    reached = heaters((213.5, 215), (59, 60))
    assert lifecycle.heater_events(heating, reached) == [
        (NotificationEvent.HEATER_TARGET_REACHED, "tool0"), (NotificationEvent.HEATER_TARGET_REACHED, "bed")]
    assert lifecycle.heater_events(reached, heaters((215.5, 215), (60, 60))) == []
    cooling = heaters((36, 0), (50, 0))
    assert lifecycle.heater_events(cooling, heaters((34, 0), (45, 0))) == [
        (NotificationEvent.HEATER_COOLED_DOWN, "tool0")]
    assert lifecycle.heater_events(None, reached) == []


async def test_heater_events_are_recorded_from_agent_statuses(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["HeaterTargetReached", "HeaterCooledDown"])
    printer = await farm.printer(admin, "Heated", status=heaters((150, 215), (58, 60)))

    async def status(session: Any, reported: dict[str, Any]) -> None:
        await lifecycle.apply_update(session, await session.get(Printer, printer.id),
                                     lifecycle.AgentUpdate(status=reported), utcnow())
        await session.commit()

    await farm.run(lambda s: status(s, heaters((214, 215), (59, 60))))
    await farm.run(lambda s: status(s, heaters((214, 215), (59, 60))))
    events = await recorded(farm)
    assert [(e.kind, e.payload["heater"]) for e in events] == [("HeaterTargetReached", "tool0")]
    assert events[0].payload["printer_name"] == "Heated"


async def statuses(farm: Farm) -> dict[int, Any]:
    async def get(session: Any) -> dict[int, Any]:
        rows = await session.execute(select(Printer.id, Printer.status))
        return {row.id: row.status for row in rows}

    return await farm.run(get)  # type: ignore[no-any-return]


async def test_an_agent_gone_while_printing_raises_printer_offline_once_per_silence(
        farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrinterOffline"])
    now = utcnow()
    ago = {minutes: now - timedelta(minutes=minutes) for minutes in (1, 4, 10)}
    # Marked offline when their agents went (status null), last heard at these times.
    wanderer = await farm.printer(admin, "Wanderer", status=None, status_updated_at=ago[4])
    print_ = await farm.print(wanderer, current=True, filename="long.gcode")
    just_gone = await farm.printer(admin, "Just gone", status=None, status_updated_at=ago[1])
    await farm.print(just_gone, current=True)
    await farm.printer(admin, "Gone idle", status=None, status_updated_at=ago[10])
    here = await farm.printer(admin, "Connected here", status=None, status_updated_at=ago[10])
    await farm.print(here, current=True)
    # Still showing a status: the silent sweep's to judge first, not this one.
    showing = await farm.printer(admin, "Showing", status=PRINTING, status_updated_at=ago[10])
    await farm.print(showing, current=True)

    def sweep(at: Any = now) -> Any:
        return raise_offline_while_printing(farm.sessionmaker, alert_after=180,
                                            connected_here=lambda i: i == here.id, now=at)

    assert await sweep() == [wanderer.id]
    [event] = await recorded(farm)
    assert (event.kind, event.printer_id, event.print_id) == ("PrinterOffline", wanderer.id, print_.id)
    assert event.payload["filename"] == "long.gcode" and "4 min" in event.payload["text"]
    assert event.payload["printer_name"] == "Wanderer"

    # Once per silence: a second sweep (another server process's, say) has nothing to tell.
    assert await sweep() == []
    # Heard again, then gone again: a new silence, told again once its minutes are up.
    async def heard_and_gone(session: Any) -> None:
        printer = await session.get(Printer, wanderer.id)
        printer.status_updated_at = now
        await session.commit()

    await farm.run(heard_and_gone)
    assert await sweep() == []
    assert sorted(await sweep(now + timedelta(minutes=3))) == sorted([wanderer.id, just_gone.id])
    assert len(await recorded(farm)) == 3


async def test_printer_offline_is_raised_after_a_graceful_restart_of_the_server(
        farm: Farm, client: httpx.AsyncClient) -> None:
    """The process that saw the agent go stops before the alert is due; the one that comes
    back (or any other) raises it from what the database holds."""
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrinterOffline"])
    printer = await farm.printer(admin, "Leaver", status=PRINTING, status_updated_at=utcnow())
    print_ = await farm.print(printer, current=True, filename="part.gcode")
    going = AgentGateway(farm.sessionmaker, farm.bus, offline_alert_seconds=0.3)
    await going._mark_offline(printer.id, admin.user.organization_id, None)  # its agent left
    await going.close_all()
    assert (await statuses(farm))[printer.id] is None
    assert await recorded(farm) == []

    restarted = AgentGateway(farm.sessionmaker, farm.bus, offline_alert_seconds=0.3)
    try:
        await asyncio.sleep(0.4)
        await restarted.liveness_sweep.sweep()
        await restarted.liveness_sweep.sweep()
    finally:
        await restarted.close_all()
    [event] = await recorded(farm)
    assert (event.kind, event.printer_id, event.print_id) == ("PrinterOffline", printer.id, print_.id)


async def test_printers_left_online_by_a_crashed_server_are_marked_offline_once(
        farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrinterOffline"])
    now = utcnow()
    long_ago, lately = now - timedelta(minutes=10), now - timedelta(minutes=1)
    # As a crashed server process leaves them: last statuses in place, no agent connected.
    printing = await farm.printer(admin, "Orphan", status=PRINTING, status_updated_at=long_ago)
    print_ = await farm.print(printing, current=True, filename="long.gcode")
    idle = await farm.printer(admin, "Idle orphan", status=IDLE, status_updated_at=long_ago)
    fresh = await farm.printer(admin, "Heard lately", status=IDLE, status_updated_at=lately)
    here = await farm.printer(admin, "Connected here", status=IDLE, status_updated_at=long_ago)
    gone = await farm.printer(admin, "Offline already", status=None, status_updated_at=long_ago)

    def sweep() -> Any:
        return mark_silent_offline(farm.sessionmaker, silent_after=300, connected_here=lambda i: i == here.id,
                                   now=now)

    marked = await sweep()
    assert {k: sorted(v) for k, v in marked.items()} == {admin.user.organization_id: sorted([printing.id, idle.id])}
    shown = await statuses(farm)
    assert shown[printing.id] is None and shown[idle.id] is None and shown[gone.id] is None
    assert shown[fresh.id] == IDLE and shown[here.id] == IDLE
    # Once: a second sweep (another server process's, say) finds nothing more to do.
    assert await sweep() == {}

    # The orphan in a print is now an offline printer gone while printing: told once.
    assert await raise_offline_while_printing(farm.sessionmaker, alert_after=180, connected_here=lambda i: False,
                                              now=now) == [printing.id]
    [event] = await recorded(farm)
    assert (event.kind, event.printer_id, event.print_id) == ("PrinterOffline", printing.id, print_.id)
    assert event.payload["filename"] == "long.gcode" and "10 min" in event.payload["text"]


async def test_the_sweep_runs_until_closed_and_tells_what_it_marked(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrinterOffline"])
    silent = await farm.printer(admin, "Silent", status=PRINTING, status_updated_at=utcnow() - timedelta(minutes=10))
    print_ = await farm.print(silent, current=True)
    told: list[dict[int, list[int]]] = []
    sweep = LivenessSweep(farm.sessionmaker, silent_after=300, alert_after=180, connected_here=lambda i: False,
                          marked=told.append, interval=0.05)
    sweep.start()
    try:
        await until(lambda: _told(told), within=5)
        await until(lambda: _raised(farm), within=5)
    finally:
        await sweep.close()
    assert told == [{admin.user.organization_id: [silent.id]}]
    [event] = await recorded(farm)
    assert (event.kind, event.print_id) == ("PrinterOffline", print_.id)


async def _raised(farm: Farm) -> bool:
    return bool(await recorded(farm))


async def _told(told: list[dict[int, list[int]]]) -> bool:
    return bool(told)


async def test_a_failed_slice_raises_slice_failed(farm: Farm, client: httpx.AsyncClient, settings: Any) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["SliceFailed"])

    async def job(session: Any) -> int:
        made = SliceJob(organization_id=admin.user.organization_id, status=SliceStatus.IN_PROGRESS.value)
        session.add(made)
        await session.commit()
        return made.id

    job_id = await farm.run(job)
    runner = SliceRunner(farm.sessionmaker, settings.data_dir)
    await runner._finish(job_id, SliceStatus.ERROR, "PrusaSlicer: the object is outside the print area")
    await runner._finish(job_id, SliceStatus.ERROR, "again")  # no longer IN_PROGRESS: nothing more
    [event] = await recorded(farm)
    assert event.kind == "SliceFailed" and "outside the print area" in event.payload["text"]


async def test_printwatch_notify_calls_reach_the_targets(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrintWatchNotify"])
    key = await issue(farm, admin)
    await register(client, key)
    answer = await post(client, "/api/v2/notify", {"api_key": key, "printer_id": PRINTER,
                                                   "email_addr": "ops@example.com", "notification": "action"})
    assert answer["statusCode"] == 200
    [event] = await recorded(farm)
    assert event.kind == "PrintWatchNotify" and event.payload["level"] == "action"
    assert event.payload["email"] == "ops@example.com"


async def test_a_farm_print_job_ending_raises_completed_or_failed(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrintJobCompleted", "PrintJobFailed"])
    printer = await farm.printer(admin, "Farm MK4", status=PRINTING)
    done = await farm.print(printer, filename="plate-a.gcode")
    failing = await farm.print(printer, filename="plate-b.gcode")

    async def jobs(session: Any) -> None:
        preset = SettingsPreset(organization_id=admin.user.organization_id, title="PLA")
        session.add(preset)
        await session.flush()
        build = Build(organization_id=admin.user.organization_id, user_id=admin.user.id, title="Brackets",
                      settings_preset_id=preset.id)
        session.add(build)
        await session.flush()
        for print_ in (done, failing):
            session.add(PrintJob(organization_id=admin.user.organization_id, build_id=build.id,
                                 printer_id=printer.id, print_id=print_.id, origin="QUEUE",
                                 state=JobState.PRINTING.value))
        await session.commit()

    await farm.run(jobs)

    async def end(session: Any) -> None:
        await scheduling.print_ended(session, await session.get(Print, done.id), finished=True)
        await scheduling.print_ended(session, await session.get(Print, failing.id), finished=False, failed=True)
        await session.commit()

    await farm.run(end)
    events = await recorded(farm)
    assert [(e.kind, e.payload["filename"], e.payload["build"]) for e in events] == [
        ("PrintJobCompleted", "plate-a.gcode", "Brackets"), ("PrintJobFailed", "plate-b.gcode", "Brackets")]


async def test_a_heater_reaching_its_target_in_a_plain_status_over_the_websocket_is_raised(
        farm: Farm, client: httpx.AsyncClient, settings: Any) -> None:
    """Plain statuses (only numbers changed) take the gateway's batched path; a heater crossing
    its target among those numbers must still raise its event."""
    from starlette.testclient import TestClient

    from agent_helpers import bearer, frame, until
    from agent_helpers import status as agent_status
    from layerfleet.app import create_app

    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["HeaterTargetReached"])
    printer = await farm.printer(admin, "Heated")
    printing = agent_status("Printing", printing=True, file="cube.gcode")

    def heating(tool: float) -> dict[str, Any]:
        return {**printing, "temperatures": {"tool0": {"actual": tool, "target": 215.0}}}

    with TestClient(create_app(settings)) as server, \
            server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        for tool in (150.0, 170.0, 190.0, 214.0, 215.0):  # the first sets the flags; the rest are plain
            ws.send_json(frame(heating(tool), ts=1700000000))

        async def raised() -> list[OutboxEvent] | None:
            events = [e for e in await recorded(farm) if e.kind == "HeaterTargetReached"]
            return events or None

        events = await until(raised)
    assert [e.payload["heater"] for e in events] == ["tool0"]


async def _seed_printers(url: str, heard: Any) -> None:
    engine = create_engine(url, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            user = await accounts.create_user(session, "offline@example.com", "password-123",
                                              organization_name="Offline")
            printing = await fleet.create_printer(session, user, "Printing")
            idle = await fleet.create_printer(session, user, "Idle")
            await session.flush()
            print_ = Print(organization_id=printing.organization_id, printer_id=printing.id)
            session.add(print_)
            await session.flush()
            printing.current_print_id = print_.id
            printing.status_updated_at = idle.status_updated_at = heard
            await session.commit()
    finally:
        await engine.dispose()


async def _told_silences(url: str) -> dict[str, Any]:
    engine = create_engine(url, pooled=False)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.execute(select(Printer.name, Printer.offline_alert_heard_at))
            return {row.name: row.offline_alert_heard_at for row in rows}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_printers_in_a_print_at_upgrade_are_not_told_again_of_their_silence(backend_name: str, tmp_path: Path) -> None:
    """The older server's timers told (or lost long ago) the silences of the day of the
    upgrade; the first sweep after it must not raise a PrinterOffline for every one of them."""
    url = asyncio.run(own_postgres_database("offline_alerts")) if backend_name == "postgresql" \
        else f"sqlite+aiosqlite:///{tmp_path / 'offline.db'}"
    migrate(url)
    heard = utcnow() - timedelta(days=2)
    asyncio.run(_seed_printers(url, heard))
    downgrade(url, "0011")
    migrate(url)
    assert asyncio.run(_told_silences(url)) == {"Printing": heard, "Idle": None}
