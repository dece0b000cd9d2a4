"""Where events are raised: each emitter records its event in the transaction of its cause,
with what the message needs (heaters, an agent gone while printing, a failed slice, PrintWatch's
notify call)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from agent_helpers import until
from conftest import IDLE, PRINTING, Farm
from layerfleet.accounts.models import Role
from layerfleet.agents import lifecycle
from layerfleet.agents.gateway import AgentGateway
from layerfleet.agents.liveness import SilentAgentSweep, mark_silent_offline
from layerfleet.database import utcnow
from layerfleet.fleet.models import Printer
from layerfleet.library.models import Build, SettingsPreset, SliceJob, SliceStatus
from layerfleet.library.slice_jobs import SliceRunner
from layerfleet.notifications.models import NotificationEvent, OutboxEvent
from layerfleet.prints.models import Print
from layerfleet.scheduling import service as scheduling
from layerfleet.scheduling.models import JobState, PrintJob
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


async def test_an_agent_gone_while_printing_raises_printer_offline(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, "json://127.0.0.1:9/x", ["PrinterOffline"])
    printer = await farm.printer(admin, "Wanderer", status=None)
    print_ = await farm.print(printer, current=True, filename="long.gcode")
    gateway = AgentGateway(farm.sessionmaker, farm.bus, offline_alert_seconds=0)
    await gateway._offline_while_printing(printer.id, print_.id)
    [event] = await recorded(farm)
    assert event.kind == "PrinterOffline" and event.print_id == print_.id
    assert event.payload["filename"] == "long.gcode" and "gone" in event.payload["text"]

    # Back online (a status came), or the print ended: nothing is raised.
    idle = await farm.printer(admin, "Back", status=IDLE)
    other = await farm.print(idle, current=True)
    await gateway._offline_while_printing(idle.id, other.id)
    assert len(await recorded(farm)) == 1
    await gateway.close_all()


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

    async def statuses(session: Any) -> dict[int, Any]:
        rows = await session.execute(select(Printer.id, Printer.status))
        return {row.id: row.status for row in rows}

    shown = await farm.run(statuses)
    assert shown[printing.id] is None and shown[idle.id] is None and shown[gone.id] is None
    assert shown[fresh.id] == IDLE and shown[here.id] == IDLE
    [event] = await recorded(farm)
    assert (event.kind, event.printer_id, event.print_id) == ("PrinterOffline", printing.id, print_.id)
    assert event.payload["filename"] == "long.gcode" and "10 min" in event.payload["text"]

    # Once: a second sweep (another server process's, say) finds nothing more to do.
    assert await sweep() == {}
    assert len(await recorded(farm)) == 1


async def test_the_sweep_runs_until_closed_and_tells_what_it_marked(farm: Farm) -> None:
    admin = await farm.member()
    silent = await farm.printer(admin, "Silent", status=IDLE, status_updated_at=utcnow() - timedelta(minutes=10))
    told: list[dict[int, list[int]]] = []
    sweep = SilentAgentSweep(farm.sessionmaker, silent_after=300, connected_here=lambda i: False,
                             marked=told.append, interval=0.05)
    sweep.start()
    try:
        await until(lambda: _told(told), within=5)
    finally:
        await sweep.close()
    assert told == [{admin.user.organization_id: [silent.id]}]


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
