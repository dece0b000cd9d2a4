"""Printer actions (seed 003) through the one command path: rules, records and commands."""

from __future__ import annotations

import pytest

from conftest import IDLE, PAUSED, PRINTING, Farm, now
from layerfleet.accounts.models import Role
from layerfleet.commands.bus import AgentCommand, RemoteStatus
from layerfleet.prints.models import Print


async def act(client, member, printer, action: str, **kwargs):
    response = await client.post(f"/api/v1/printers/{printer.id}/{action}", headers=member.headers, **kwargs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"succeeded", "printer"}
    assert body["printer"]["id"] == printer.id
    return body


async def load_print(farm: Farm, print_id: int) -> Print:
    async def get(session):
        return await session.get(Print, print_id)

    return await farm.run(get)


async def test_pause_sends_pause_with_the_printers_pause_settings(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING, retract_on_pause=4.0, lift_z_on_pause=1.5,
                                 tools_off_on_pause=False, bed_off_on_pause=True)
    print_ = await farm.print(printer, current=True)
    agent = await farm.connect_agent(printer)
    body = await act(client, owner, printer, "pause_print")
    assert body["succeeded"] is True
    assert agent.received == [
        AgentCommand("pause", {"retract": 4.0, "lift_z": 1.5, "tools_off": False, "bed_off": True}, "api")
    ]
    assert agent.received[0].as_message() == {"commands": [{
        "cmd": "pause", "args": {"retract": 4.0, "lift_z": 1.5, "tools_off": False, "bed_off": True},
        "initiator": "api"}]}
    # A user's own pause is not a pause "because of a detected print failure".
    assert (await load_print(farm, print_.id)).paused_at is None


@pytest.mark.parametrize("action", ["pause_print", "resume_print", "cancel_print"])
async def test_commands_fail_fast_when_the_agent_is_not_connected(client, farm: Farm, action: str) -> None:
    owner = await farm.member()
    status = PAUSED if action == "resume_print" else PRINTING
    printer = await farm.printer(owner, status=status)
    print_ = await farm.print(printer, current=True, alerted_at=now())
    body = await act(client, owner, printer, action)
    assert body["succeeded"] is False
    stored = await load_print(farm, print_.id)
    assert stored.alert_overwrite is None and stored.alert_acknowledged_at is None


@pytest.mark.parametrize(
    ("action", "status"),
    [("pause_print", IDLE), ("pause_print", PAUSED), ("pause_print", None),
     ("resume_print", PRINTING), ("resume_print", IDLE), ("cancel_print", IDLE), ("cancel_print", None)],
)
async def test_commands_fail_when_the_printer_is_not_in_a_state_for_them(client, farm: Farm, action, status) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=status)
    agent = await farm.connect_agent(printer)
    body = await act(client, owner, printer, action)
    assert body["succeeded"] is False
    assert agent.received == []


async def test_resume_marks_the_print_not_failed(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PAUSED)
    print_ = await farm.print(printer, current=True, alerted_at=now())
    agent = await farm.connect_agent(printer)
    body = await act(client, owner, printer, "resume_print")
    assert body["succeeded"] is True
    assert agent.received == [AgentCommand("resume", {}, "api")]
    assert body["printer"]["current_print"]["alert_overwrite"] == "NOT_FAILED"
    stored = await load_print(farm, print_.id)
    assert stored.alert_overwrite == "NOT_FAILED" and stored.alert_acknowledged_at is not None


@pytest.mark.parametrize("status", [PRINTING, PAUSED])
async def test_cancel_marks_the_print_failed(client, farm: Farm, status) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=status)
    print_ = await farm.print(printer, current=True)
    agent = await farm.connect_agent(printer)
    body = await act(client, owner, printer, "cancel_print/")  # Obico's own spelling, with a slash
    assert body["succeeded"] is True
    assert agent.received == [AgentCommand("cancel", {}, "api")]
    stored = await load_print(farm, print_.id)
    assert stored.alert_overwrite == "FAILED"
    assert stored.alert_acknowledged_at is None  # there was no alert to acknowledge


async def test_mute_stops_watching_and_tells_the_agent(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True)
    agent = await farm.connect_agent(printer)
    body = await act(client, owner, printer, "mute_current_print")
    assert body["succeeded"] is True
    assert body["printer"]["not_watching_reason"] == "Alerts are muted for current print"
    assert body["printer"]["current_print"]["alert_muted_at"] is not None
    assert agent.received == [RemoteStatus(should_watch=False)]
    assert (await load_print(farm, print_.id)).alert_muted_at is not None

    unmuted = await act(client, owner, printer, "mute_current_print", json={"mute_alert": False})
    assert unmuted["printer"]["not_watching_reason"] is None
    assert agent.received[-1] == RemoteStatus(should_watch=True)


async def test_mute_is_recorded_even_while_the_agent_is_offline(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    await farm.print(printer, current=True)
    body = await act(client, owner, printer, "mute_current_print")
    assert body["succeeded"] is True
    assert body["printer"]["current_print"]["alert_muted_at"] is not None


@pytest.mark.parametrize("action", ["mute_current_print", "acknowledge_alert"])
async def test_mute_and_acknowledge_need_a_current_print(client, farm: Farm, action: str) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=IDLE)
    await farm.connect_agent(printer)
    assert (await act(client, owner, printer, action))["succeeded"] is False


async def test_acknowledge_alert_records_the_answer(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True, alerted_at=now())
    plain = await act(client, owner, printer, "acknowledge_alert")
    assert plain["succeeded"] is True
    assert plain["printer"]["current_print"]["alert_acknowledged_at"] is not None
    assert plain["printer"]["current_print"]["alert_overwrite"] is None
    answered = await act(client, owner, printer, "acknowledge_alert", json={"alert_overwrite": "FAILED"})
    assert answered["printer"]["current_print"]["alert_overwrite"] == "FAILED"
    assert (await load_print(farm, print_.id)).alert_overwrite == "FAILED"


async def test_acknowledge_with_an_unknown_answer_is_400(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True, alerted_at=now())
    response = await client.post(f"/api/v1/printers/{printer.id}/acknowledge_alert", headers=owner.headers,
                                 json={"alert_overwrite": "MAYBE"})
    assert response.status_code == 400 and "alert_overwrite" in response.json()
    assert (await load_print(farm, print_.id)).alert_acknowledged_at is None


async def test_viewers_cannot_control_prints(client, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    viewer = await farm.member(Role.VIEWER, organization="A")
    printer = await farm.printer(owner, status=PRINTING)
    await farm.print(printer, current=True)
    agent = await farm.connect_agent(printer)
    for action in ["pause_print", "cancel_print", "resume_print", "mute_current_print", "acknowledge_alert"]:
        response = await client.post(f"/api/v1/printers/{printer.id}/{action}", headers=viewer.headers)
        assert response.status_code == 403, action
    assert agent.received == []


async def test_operators_control_prints(client, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    operator = await farm.member(Role.OPERATOR, organization="A")
    printer = await farm.printer(owner, status=PRINTING)
    await farm.print(printer, current=True)
    agent = await farm.connect_agent(printer)
    assert (await act(client, operator, printer, "pause_print"))["succeeded"] is True
    assert len(agent.received) == 1


async def test_a_failing_delivery_reports_failure_and_records_nothing(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True)

    async def broken(_message) -> None:
        raise ConnectionError("socket closed")

    farm.bus.register(printer.id, broken)
    body = await act(client, owner, printer, "cancel_print")
    assert body["succeeded"] is False
    assert (await load_print(farm, print_.id)).alert_overwrite is None
