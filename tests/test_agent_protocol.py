"""The server side of the Obico printer-agent protocol: printer-token HTTP calls, linking by
one-time code, and the agent websocket with the print lifecycle it drives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from sqlalchemy import select, update
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from agent_helpers import (
    SETTINGS,
    agent_headers,
    bearer,
    events_of,
    frame,
    jpeg,
    load_printer,
    next_command,
    prints_of,
    status,
    until,
)
from conftest import PRINTING, Farm
from layerfleet.accounts.models import Role
from layerfleet.agents.models import OneTimeVerificationCode
from layerfleet.app import create_app
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.fleet.models import Printer, PrinterEvent
from layerfleet.prints.models import GCodeFile
from layerfleet.ratelimit import RateLimiter


@pytest.fixture(autouse=True)
def _fresh_throttles(app: Any) -> None:
    app.state.services.verify_throttle = RateLimiter(20, 600)
    app.state.services.discovery_throttle = RateLimiter(300, 600)


@pytest.fixture
def server(settings: Settings) -> Iterator[TestClient]:
    """An app of its own for the websocket: TestClient runs it in its own thread and loop."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


class RecordingSink:
    def __init__(self) -> None:
        self.frames: list[tuple[int, int, bytes]] = []

    async def submit(self, printer_id: int, organization_id: int, jpeg_bytes: bytes, received_at: Any,
                     *, camera: str | None = None) -> None:
        self.frames.append((printer_id, organization_id, jpeg_bytes))


# --- printer-token authentication -------------------------------------------------------------

async def test_octo_calls_need_the_printers_own_token(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "Voron")
    archived = await farm.printer(owner, "Old", archived_at=utcnow())
    for headers in [{}, {"Authorization": "Token nope"}, {"Authorization": "Basic abc"}, owner.headers,
                    agent_headers(archived)]:
        for method, path in [("GET", "/api/v1/octo/printer/"), ("PATCH", "/api/v1/octo/printer/"),
                             ("POST", "/api/v1/octo/pic/"), ("POST", "/api/v1/octo/g_code_files/"),
                             ("POST", "/api/v1/octo/printer_events/")]:
            response = await client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert set(response.json()) == {"detail"}

    response = await client.get("/api/v1/octo/printer/", headers=agent_headers(printer))
    assert response.status_code == 200
    assert response.json() == {
        "user": {"is_pro": False},
        "printer": {"id": printer.id, "name": "Voron", "is_pro": False, "retract_on_pause": 6.5,
                    "lift_z_on_pause": 2.5, "tools_off_on_pause": True, "bed_off_on_pause": False},
    }
    # Any case of the scheme, as agents differ.
    lower = await client.get("/api/v1/octo/printer/", headers={"Authorization": f"token {printer.auth_token}"})
    assert lower.status_code == 200


async def test_the_extension_probe_is_a_json_404(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    response = await client.get(f"/ent/api/printers/{printer.id}/ext/", headers=agent_headers(printer))
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}


async def test_patch_applies_only_known_valid_fields(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "Before")
    response = await client.patch("/api/v1/octo/printer/", headers=agent_headers(printer), json={
        "name": "After", "retract_on_pause": 3, "lift_z_on_pause": -5, "bogus": 1, "archived_at": utcnow().isoformat(),
        "auth_token": "mine-now", "id": 999,
    })
    assert response.status_code == 200, response.text
    assert response.json()["printer"]["name"] == "After"
    stored = await load_printer(farm, printer.id)
    assert (stored.name, stored.retract_on_pause, stored.lift_z_on_pause) == ("After", 3.0, 2.5)
    assert stored.archived_at is None and stored.auth_token == printer.auth_token

    form = await client.patch("/api/v1/octo/printer/", headers=agent_headers(printer),
                              data={"name": "From a form", "tools_off_on_pause": "false"})
    assert form.status_code == 200
    stored = await load_printer(farm, printer.id)
    assert stored.name == "From a form" and stored.tools_off_on_pause is False

    for content in [b"{not json", b"[1, 2]"]:
        bad = await client.patch("/api/v1/octo/printer/", content=content,
                                 headers={**agent_headers(printer), "Content-Type": "application/json"})
        assert bad.status_code == 400 and "detail" in bad.json()


# --- pictures ------------------------------------------------------------------------------------

async def test_a_picture_becomes_the_printers_pic_and_reaches_the_frame_sink(
    app: Any, client: httpx.AsyncClient, farm: Farm
) -> None:
    sink = RecordingSink()
    previous_sink, app.state.services.frame_sink = app.state.services.frame_sink, sink
    try:
        owner = await farm.member()
        printer = await farm.printer(owner)
        picture = jpeg()
        response = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                                     files={"pic": ("pic", picture)})
        assert response.status_code == 200 and response.json() == {"result": "ok"}
        assert sink.frames == [(printer.id, printer.organization_id, picture)]

        body = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
        url = body["pic"]["img_url"]
        path = url.split("/media/", 1)[1]
        assert path.startswith(f"orgs/{printer.organization_id}/")
        served = await client.get(f"/media/{path}", headers=owner.headers)
        assert served.status_code == 200 and served.content == picture
        stranger = await farm.member(organization="Other farm")
        assert (await client.get(f"/media/{path}", headers=stranger.headers)).status_code == 404

        # A newer picture replaces the old one (the old file goes); a viewing boost is not for the detector.
        second = jpeg(color=(10, 200, 10))
        response = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                                     files={"pic": ("pic", second)}, data={"viewing_boost": "true"})
        assert response.json() == {"result": "ok"}
        assert len(sink.frames) == 1
        stored = await load_printer(farm, printer.id)
        assert stored.pic_path != path and stored.pic_updated_at is not None
        assert (await client.get(f"/media/{path}", headers=owner.headers)).status_code == 404
        assert (await client.get(f"/media/{stored.pic_path}", headers=owner.headers)).content == second

        # Another camera's picture is accepted but is not the printer's picture.
        nozzle = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                                   files={"pic": ("pic", jpeg())},
                                   data={"is_nozzle_camera": "true", "camera_name": "nozzle"})
        assert nozzle.json() == {"result": "ok"}
        assert (await load_printer(farm, printer.id)).pic_path == stored.pic_path
    finally:
        app.state.services.frame_sink = previous_sink


@pytest.mark.parametrize("content", [b"", b"hello, not a picture", jpeg()[:200], b"\x89PNG\r\n\x1a\n" + b"0" * 64])
async def test_bad_pictures_are_400_and_change_nothing(client: httpx.AsyncClient, farm: Farm, content: bytes) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    response = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer), files={"pic": ("pic", content)})
    assert response.status_code == 400, response.text
    assert "pic" in response.json()
    assert (await load_printer(farm, printer.id)).pic_path is None


async def test_picture_requests_without_a_picture_or_too_large(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    missing = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer), data={"viewing_boost": "true"})
    assert missing.status_code == 400 and "pic" in missing.json()
    huge = await client.post("/api/v1/octo/pic/", headers=agent_headers(printer),
                             files={"pic": ("pic", b"\xff\xd8\xff" + b"0" * (11 * 1024 * 1024))})
    assert huge.status_code == 413 and "detail" in huge.json()
    odd = await client.post("/api/v1/octo/pic/", content=b"abc",
                            headers={**agent_headers(printer), "Content-Type": "text/plain"})
    assert odd.status_code == 415
    assert (await load_printer(farm, printer.id)).pic_path is None


# --- G-code files and printer events --------------------------------------------------------------

async def test_gcode_files_are_created_once_per_file(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    form = {"filename": "benchy.gcode", "safe_filename": "benchy.gcode", "num_bytes": "1276",
            "agent_signature": "md5:e2f69f", "url": "benchy.gcode"}
    first = await client.post("/api/v1/octo/g_code_files/", headers=agent_headers(printer), data=form)
    assert first.status_code == 201, first.text
    body = first.json()
    assert isinstance(body["id"], int) and body["filename"] == "benchy.gcode" and body["num_bytes"] == 1276
    again = await client.post("/api/v1/octo/g_code_files/", headers=agent_headers(printer), data=form)
    assert again.status_code == 200 and again.json()["id"] == body["id"]

    async def files(session: Any) -> list[GCodeFile]:
        return list((await session.execute(select(GCodeFile))).scalars())

    stored = await farm.run(files)
    assert len(stored) == 1
    assert (stored[0].organization_id, stored[0].user_id, stored[0].printer_id) == (
        printer.organization_id, owner.user.id, printer.id)

    for bad, field in [({"num_bytes": "12"}, "filename"), ({**form, "num_bytes": "many"}, "num_bytes"),
                       ({**form, "filename": "x" * 2000}, "filename")]:
        response = await client.post("/api/v1/octo/g_code_files/", headers=agent_headers(printer), data=bad)
        assert response.status_code == 400 and field in response.json()
    assert len(await farm.run(files)) == 1


async def test_printer_events_are_stored(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    event = {"event_title": "Webcam Streaming Failed", "event_text": "<div>Follow the guide.</div>",
             "event_class": "WARNING", "event_type": "PRINTER_ERROR", "info_url": "https://example.com/help"}
    response = await client.post("/api/v1/octo/printer_events/", headers=agent_headers(printer), data=event)
    assert response.status_code == 200 and response.json() == {"result": "ok"}
    with_snapshot = await client.post("/api/v1/octo/printer_events/", headers=agent_headers(printer),
                                      data={**event, "event_type": "FILAMENT_CHANGE", "notify": "true"},
                                      files={"snapshot": ("snapshot", jpeg())})
    assert with_snapshot.json() == {"result": "ok"}
    stored = await events_of(farm, printer.id)
    assert [(e.event_type, e.event_class, e.notify) for e in stored] == [
        ("PRINTER_ERROR", "WARNING", False), ("FILAMENT_CHANGE", "WARNING", True)]
    assert stored[0].event_text == "<div>Follow the guide.</div>" and stored[0].image_path is None
    assert stored[1].image_path is not None and stored[1].image_path.startswith(f"orgs/{printer.organization_id}/")

    for bad, field in [({**event, "event_class": "PANIC"}, "event_class"), ({**event, "notify": "perhaps"}, "notify")]:
        response = await client.post("/api/v1/octo/printer_events/", headers=agent_headers(printer), data=bad)
        assert response.status_code == 400 and field in response.json()
    bad_snapshot = await client.post("/api/v1/octo/printer_events/", headers=agent_headers(printer), data=event,
                                     files={"snapshot": ("snapshot", b"not a jpeg")})
    assert bad_snapshot.status_code == 400 and "snapshot" in bad_snapshot.json()
    assert len(await events_of(farm, printer.id)) == 2


async def test_unlinked_discovery_is_acknowledged(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/octo/unlinked/", json={"device_id": "abc", "device_secret": "s3cret"})
    assert response.status_code == 200 and response.json() == {"messages": []}
    huge = await client.post("/api/v1/octo/unlinked/", json={"junk": "x" * 100_000})
    assert huge.status_code == 413 and "detail" in huge.json()


# --- linking ----------------------------------------------------------------------------------------

async def get_code(client: httpx.AsyncClient, member: Any, printer_id: int | None = None) -> dict[str, Any]:
    params = {"printer_id": printer_id} if printer_id is not None else None
    response = await client.get("/api/v1/onetimeverificationcodes/", headers=member.headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_linking_by_code_end_to_end(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    code = await get_code(client, owner)
    assert len(code["code"]) == 6 and code["code"].isdigit()
    assert code["printer"] is None and code["printer_id"] is None and code["verified_at"] is None
    assert (await get_code(client, owner))["code"] == code["code"]  # the live code, not a new one each time

    linked = await client.post(f"/api/v1/octo/verify/?code={code['code']}")
    assert linked.status_code == 200, linked.text
    body = linked.json()
    printer = body["printer"]
    assert printer["name"] == "My Printer" and printer["auth_token"] and body["verified_at"] is not None
    token_headers = {"Authorization": f"Token {printer['auth_token']}"}
    octo = await client.get("/api/v1/octo/printer/", headers=token_headers)
    assert octo.status_code == 200 and octo.json()["printer"]["id"] == printer["id"]
    listed = (await client.get("/api/v1/printers/", headers=owner.headers)).json()
    assert [p["id"] for p in listed] == [printer["id"]]

    reused = await client.post(f"/api/v1/octo/verify/?code={code['code']}")
    assert reused.status_code == 404 and reused.json() == {"detail": "Not found."}
    assert len((await client.get("/api/v1/printers/", headers=owner.headers)).json()) == 1

    # A new code afterwards; the agent may name its printer.
    fresh = await get_code(client, owner)
    assert fresh["code"] != code["code"] or fresh["id"] != code["id"]
    named = await client.post(f"/api/v1/octo/verify/?code={fresh['code']}", json={"name": "Prusa MK4"})
    assert named.status_code == 200 and named.json()["printer"]["name"] == "Prusa MK4"


async def test_relinking_resets_the_printers_token(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "Ender")
    code = await get_code(client, owner, printer.id)
    assert code["printer_id"] == printer.id and code["printer"]["id"] == printer.id
    relinked = await client.post(f"/api/v1/octo/verify/?code={code['code']}")
    assert relinked.status_code == 200
    new = relinked.json()["printer"]
    assert new["id"] == printer.id and new["name"] == "Ender" and new["auth_token"] != printer.auth_token
    assert (await client.get("/api/v1/octo/printer/", headers=agent_headers(printer))).status_code == 401
    ok = await client.get("/api/v1/octo/printer/", headers={"Authorization": f"Token {new['auth_token']}"})
    assert ok.status_code == 200
    assert len((await client.get("/api/v1/printers/", headers=owner.headers)).json()) == 1


async def test_wrong_expired_and_foreign_codes(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    stranger = await farm.member(organization="B")
    theirs = await farm.printer(stranger)
    for malformed in ["", "12ab56", "1234567", "12345"]:
        response = await client.post("/api/v1/octo/verify/", params={"code": malformed})
        assert response.status_code == 400 and "code" in response.json(), malformed
    code = await get_code(client, owner)
    wrong = f"{(int(code['code']) + 1) % 1_000_000:06d}"
    response = await client.post(f"/api/v1/octo/verify/?code={wrong}")
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}

    async def expire(session: Any) -> None:
        await session.execute(update(OneTimeVerificationCode).values(expired_at=utcnow() - timedelta(seconds=1)))
        await session.commit()

    await farm.run(expire)
    expired = await client.post(f"/api/v1/octo/verify/?code={code['code']}")
    assert expired.status_code == 404 and expired.json() == {"detail": "Not found."}
    assert (await client.get("/api/v1/printers/", headers=owner.headers)).json() == []

    foreign = await client.get("/api/v1/onetimeverificationcodes/", headers=owner.headers,
                               params={"printer_id": theirs.id})
    assert foreign.status_code == 404
    viewer = await farm.member(Role.VIEWER, organization="A")
    assert (await client.get("/api/v1/onetimeverificationcodes/", headers=viewer.headers)).status_code == 403
    assert (await client.get("/api/v1/onetimeverificationcodes/")).status_code == 401
    too_long = await client.post(f"/api/v1/octo/verify/?code={code['code']}", json={"name": "x" * 300})
    assert too_long.status_code == 400


async def test_anonymous_verify_calls_are_throttled_per_address(app: Any) -> None:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as guesser:
        answers = [(await guesser.post(f"/api/v1/octo/verify/?code={n:06d}")).status_code for n in range(21)]
    assert answers[:20] == [404] * 20 and answers[20] == 429
    other = httpx.ASGITransport(app=app, client=("203.0.113.10", 4242))
    async with httpx.AsyncClient(transport=other, base_url="http://testserver") as neighbour:
        assert (await neighbour.post("/api/v1/octo/verify/?code=000000")).status_code == 404


async def test_only_wrong_codes_count_towards_the_verify_throttle(app: Any, farm: Farm) -> None:
    owner = await farm.member()
    transport = httpx.ASGITransport(app=app, client=("203.0.113.11", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as farm_host:
        for _ in range(25):  # more printers than the throttle's 20 calls, all with real codes
            code = (await farm_host.get("/api/v1/onetimeverificationcodes/", headers=owner.headers)).json()["code"]
            linked = await farm_host.post(f"/api/v1/octo/verify/?code={code}")
            assert linked.status_code == 200, linked.text
        wrong = [(await farm_host.post("/api/v1/octo/verify/?code=abc")).status_code for _ in range(21)]
    assert wrong[:20] == [400] * 20 and wrong[20] == 429


# --- the websocket ----------------------------------------------------------------------------------

async def test_websocket_refuses_bad_tokens(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    archived = await farm.printer(owner, archived_at=utcnow())
    for headers in [{}, {"Authorization": "bearer wrong"}, {"Authorization": "bearer"}, bearer(archived)]:
        with pytest.raises(WebSocketDisconnect) as refused, server.websocket_connect("/ws/dev/", headers=headers):
            pass
        assert refused.value.code == 4401


async def test_status_and_settings_reach_the_printer_object(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    reported = status("Operational")
    with server.websocket_connect("/ws/dev/", headers={"Authorization": f"BEARER {printer.auth_token}"}) as ws:
        assert ws.receive_json() == {"remote_status": {"viewing": False, "should_watch": False}}
        ws.send_json(frame(reported, settings=SETTINGS))

        async def reported_status() -> Any:
            body = server.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers).json()
            return body if body["status"] == reported else None

        body = await until(reported_status)
        settings = body["settings"]
        assert settings["agent_name"] == "octoprint_obico" and settings["agent_version"] == "2.6.1"
        assert settings["temp_profiles"] == SETTINGS["temperature"]["profiles"]  # type: ignore[index]
        assert (settings["webcam_flipH"], settings["webcam_flipV"], settings["webcam_rotation"],
                settings["webcam_streamRatio"]) == (True, False, 90, "16:9")
        assert (await load_printer(farm, printer.id)).status_updated_at is not None

    async def offline() -> bool:
        return (await load_printer(farm, printer.id)).status is None

    await until(offline)


async def test_pause_through_the_api_reaches_the_agent(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, retract_on_pause=4.0, lift_z_on_pause=1.5, tools_off_on_pause=False,
                                 bed_off_on_pause=True)
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        ws.send_json(frame(status("Printing", printing=True, file="cube.gcode"), ts=1_700_000_000))
        # Watching starts with the print, and the agent is told so.
        assert ws.receive_json() == {"remote_status": {"viewing": False, "should_watch": True}}
        response = server.post(f"/api/v1/printers/{printer.id}/pause_print", headers=owner.headers)
        assert response.status_code == 200 and response.json()["succeeded"] is True
        assert next_command(ws) == {"commands": [{
            "cmd": "pause", "args": {"retract": 4.0, "lift_z": 1.5, "tools_off": False, "bed_off": True},
            "initiator": "api"}]}
        ws.send_json(frame(status("Paused", paused=True, file="cube.gcode"), ts=1_700_000_000, event="PrintPaused"))

        async def paused() -> Any:
            body = server.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers).json()
            return body["status"]["state"]["text"] == "Paused"

        await until(paused)
        resumed = server.post(f"/api/v1/printers/{printer.id}/resume_print", headers=owner.headers)
        assert resumed.json()["succeeded"] is True
        assert next_command(ws) == {"commands": [{"cmd": "resume", "args": {}, "initiator": "api"}]}
        assert [e.event_type for e in await events_of(farm, printer.id)] == ["PRINT_PAUSED"]
    # Gone offline: commands fail at once again.
    await until(lambda: _offline(farm, printer.id))
    refused = server.post(f"/api/v1/printers/{printer.id}/cancel_print", headers=owner.headers)
    assert refused.json()["succeeded"] is False


async def _offline(farm: Farm, printer_id: int) -> bool:
    return (await load_printer(farm, printer_id)).status is None


async def test_print_lifecycle(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    other_org = await farm.member(organization="Other farm")
    foreign_printer = await farm.printer(other_org)
    gcode = server.post("/api/v1/octo/g_code_files/", headers=agent_headers(printer),
                        data={"filename": "a.gcode", "safe_filename": "a.gcode", "agent_signature": "md5:1"}).json()
    foreign = server.post("/api/v1/octo/g_code_files/", headers=agent_headers(foreign_printer),
                          data={"filename": "f.gcode", "safe_filename": "f.gcode", "agent_signature": "md5:2"}).json()
    t1, t2, t3 = 1_700_000_000, 1_700_001_000, 1_700_002_000
    printing_a = status("Printing", printing=True, file="a.gcode", gcode_id=gcode["id"])
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        ws.send_json(frame(status("Printing", printing=True, file="a.gcode"), ts=-1, event="PrinterStateChanged"))
        ws.send_json(frame(printing_a, ts=t1, event="PrintStarted"))
        ws.send_json(frame(printing_a, ts=t1 + 15))  # clock skew: the same print
        ws.send_json(frame(printing_a, ts=t1, event="PrintPaused"))
        ws.send_json(frame(printing_a, ts=t1, event="PrintResumed"))
        ws.send_json(frame(status("Operational", file="a.gcode"), ts=t1, event="PrintDone"))
        ws.send_json(frame(status("Operational", file="a.gcode"), ts=t1))  # late: must not restart it
        ws.send_json(frame(status("Operational", file="a.gcode"), ts=-1))

        async def first_done() -> Any:
            found = await prints_of(farm, printer.id)
            return found if found and found[0].finished_at is not None else None

        prints = await until(first_done)
        await until(lambda: _status_is(farm, printer.id, -1, "Operational"))
        prints = await prints_of(farm, printer.id)
        assert len(prints) == 1
        first = prints[0]
        assert (first.filename, first.ext_id, first.gcode_file_id, first.cancelled_at) == ("a.gcode", t1, gcode["id"],
                                                                                            None)
        assert [e.event_type for e in await events_of(farm, printer.id)] == ["PRINT_PAUSED", "PRINT_RESUMED"]
        assert (await load_printer(farm, printer.id)).current_print_id is None

        # A second print, with another organization's G-code id, which must not be linked.
        ws.send_json(frame(status("Printing", printing=True, file="b.gcode", gcode_id=foreign["id"]), ts=t2,
                           event="PrintStarted"))
        await until(lambda: _count_prints(farm, printer.id, 2))

    # Reconnect mid-print: the same print continues, nothing is created twice.
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        assert ws.receive_json() == {"remote_status": {"viewing": False, "should_watch": True}}
        ws.send_json(frame(status("Printing", printing=True, file="b.gcode"), ts=t2 + 3))
        ws.send_json(frame(status("Cancelling", printing=True, file="b.gcode"), ts=t2, event="PrintCancelled"))
        ws.send_json(frame(status("Cancelling", printing=True, file="b.gcode"), ts=t2, event="PrintFailed"))
        # A third print that simply stops being reported: -1 ends it cancelled.
        ws.send_json(frame(status("Printing", printing=True, file="c.gcode"), ts=t3))
        ws.send_json(frame(status("Operational", file="c.gcode"), ts=-1))
        await until(lambda: _count_prints(farm, printer.id, 3))
        await until(lambda: _status_is(farm, printer.id, -1, "Operational", file="c.gcode"))
    prints = await prints_of(farm, printer.id)
    assert [(p.filename, p.ext_id) for p in prints] == [("a.gcode", t1), ("b.gcode", t2), ("c.gcode", t3)]
    second, third = prints[1], prints[2]
    assert second.gcode_file_id is None
    assert second.cancelled_at is not None and second.finished_at is None
    assert third.cancelled_at is not None and third.finished_at is None
    assert (await load_printer(farm, printer.id)).current_print_id is None


async def test_events_replayed_after_a_reconnect_end_only_their_own_print(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    t1 = 1_700_000_000
    t2 = t1 + 12  # the next print started within the clock-skew window of the first
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        ws.send_json(frame(status("Printing", printing=True, file="a.gcode"), ts=t1, event="PrintStarted"))
        ws.send_json(frame(status("Operational", file="a.gcode"), ts=t1, event="PrintDone"))
        ws.send_json(frame(status("Printing", printing=True, file="b.gcode"), ts=t2, event="PrintStarted"))
        await until(lambda: _count_prints(farm, printer.id, 2))
        # A copy of the first print's end, late: the second print goes on.
        ws.send_json(frame(status("Printing", printing=True, file="b.gcode"), ts=t1, event="PrintFailed"))
        ws.send_json(frame(status("Finishing", printing=True, file="b.gcode"), ts=t2))
        # Frames are applied in order: once this last one shows, the late PrintFailed was handled.
        await until(lambda: _status_is(farm, printer.id, t2, "Finishing", file="b.gcode"))
    prints = await prints_of(farm, printer.id)
    assert [(p.filename, p.ext_id) for p in prints] == [("a.gcode", t1), ("b.gcode", t2)]
    assert prints[0].finished_at is not None and prints[0].cancelled_at is None
    assert prints[1].finished_at is None and prints[1].cancelled_at is None
    assert (await load_printer(farm, printer.id)).current_print_id == prints[1].id


async def _count_prints(farm: Farm, printer_id: int, count: int) -> bool:
    return len(await prints_of(farm, printer_id)) == count


async def _status_is(farm: Farm, printer_id: int, _ts: int, text: str, file: str | None = None) -> bool:
    printer = await load_printer(farm, printer_id)
    state = (printer.status or {}).get("state", {}).get("text")
    name = (printer.status or {}).get("job", {}).get("file", {}).get("name")
    return state == text and (file is None or name == file)


async def test_bad_frames_are_ignored_and_other_printers_unaffected(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "A")
    neighbour = await farm.printer(owner, "B")
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws, \
            server.websocket_connect("/ws/dev/", headers=bearer(neighbour)) as other:
        ws.receive_json()
        other.receive_json()
        for text in ["not json", "[1, 2, 3]", "42", "null", '{"unknown": 1}', '{"status": "text"}',
                     '{"status": {"state": {}}, "current_print_ts": "soon"}', '{"current_print_ts": 1e300}',
                     '{"status": {"x": NaN}}', '{"event": {"event_type": 7}}', '{"settings": []}',
                     "[" * 100_000, '{"passthru": {"ref": "nobody-asked", "ret": 1}}']:
            ws.send_text(text)
        ws.send_bytes(b"\x00\x01binary")
        ws.send_json(frame(status("Operational"), ts=-1, surprise="ignored key"))
        await until(lambda: _status_is(farm, printer.id, -1, "Operational"))
        assert await prints_of(farm, printer.id) == []

        # Too large: that one connection is closed (1009); the neighbour carries on.
        ws.send_text('{"status": {"pad": "' + "x" * (1024 * 1024) + '"}}')
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1009
        other.send_json(frame(status("Printing", printing=True, file="n.gcode"), ts=1_700_000_000))
        await until(lambda: _count_prints(farm, neighbour.id, 1))


async def test_a_second_agent_with_the_same_token_is_a_duplicate(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as first:
        first.receive_json()
        with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as second:
            assert "remote_status" in second.receive_json()
            probe = first.receive_json()["passthru"]
            assert (probe["target"], probe["func"]) == ("_printer", "get_current_data")
            first.send_json({"passthru": {"ref": probe["ref"], "ret": {"state": {"text": "Operational"}}}})
            with pytest.raises(WebSocketDisconnect) as told:
                first.receive_json()
            assert told.value.code == 4321
            # The newer connection holds the printer: commands and status go through it.
            second.send_json(frame(status("Printing", printing=True, file="d.gcode"), ts=1_700_000_000))
            assert second.receive_json()["remote_status"]["should_watch"] is True
            response = server.post(f"/api/v1/printers/{printer.id}/pause_print", headers=owner.headers)
            assert response.json()["succeeded"] is True
            assert next_command(second)["commands"][0]["cmd"] == "pause"
    # The old connection ending left the newer one's state alone until that one ended too.
    await until(lambda: _offline(farm, printer.id))


async def test_a_dead_old_connection_is_dropped_quietly(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    server.app.state.services.agent_gateway.probe_timeout = 0.3  # type: ignore[attr-defined]
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as stale:
        stale.receive_json()
        with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as fresh:
            fresh.receive_json()
            assert "passthru" in stale.receive_json()  # asked, never answers
            with pytest.raises(WebSocketDisconnect) as dropped:
                stale.receive_json()
            assert dropped.value.code == 1001
            fresh.send_json(frame(status("Operational"), ts=-1))
            await until(lambda: _status_is(farm, printer.id, -1, "Operational"))
        await until(lambda: _offline(farm, printer.id))


async def test_server_to_agent_calls_and_relinking_drops_the_old_agent(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    gateway = server.app.state.services.agent_gateway  # type: ignore[attr-defined]
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        answer = server.portal.start_task_soon(gateway.call, printer.id, "get_current_data")  # type: ignore[union-attr]
        call = ws.receive_json()["passthru"]
        assert (call["target"], call["func"], call["args"], call["kwargs"]) == ("_printer", "get_current_data", [], {})
        ws.send_json({"passthru": {"ref": call["ref"], "ret": {"state": {"text": "Operational"}}}})
        assert answer.result(timeout=5) == {"state": {"text": "Operational"}}

        code = server.get("/api/v1/onetimeverificationcodes/", headers=owner.headers,
                          params={"printer_id": printer.id}).json()
        assert server.post(f"/api/v1/octo/verify/?code={code['code']}").status_code == 200
        with pytest.raises(WebSocketDisconnect) as dropped:
            ws.receive_json()
        assert dropped.value.code == 4401


async def test_printing_status_through_conftest_shape_is_accepted(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        ws.send_json({"status": PRINTING, "current_print_ts": 1_700_000_000})

        async def printing() -> Any:
            stored = await load_printer(farm, printer.id)
            return stored.current_print_id is not None and stored.status == PRINTING

        await until(printing)

    async def events(session: Any) -> list[PrinterEvent]:
        return list((await session.execute(select(PrinterEvent))).scalars())

    assert await farm.run(events) == []


async def test_a_picture_replaced_while_it_is_served_is_still_served_whole(app: Any, farm: Farm) -> None:
    from types import SimpleNamespace

    from layerfleet.api.media import serve_media
    from layerfleet.media import media_root

    owner = await farm.member()
    relative = f"orgs/{owner.user.organization_id}/printers/1/pics/race.jpg"
    file = media_root(app.state.services.settings.data_dir) / relative
    file.parent.mkdir(parents=True, exist_ok=True)
    picture = jpeg(640, 480)
    file.write_bytes(picture)
    request = SimpleNamespace(app=app)
    response = await serve_media(relative, request, owner.user)  # type: ignore[arg-type]
    file.unlink()  # a newer picture arrived and the old one went, after the request found it
    body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[misc]
    assert body == picture and response.headers["content-length"] == str(len(picture))
    with pytest.raises(HTTPException) as missing:
        await serve_media(relative, request, owner.user)  # type: ignore[arg-type]
    assert missing.value.status_code == 404


def _at(reported: dict[str, Any], completion: float) -> dict[str, Any]:
    reported["progress"]["completion"] = completion
    return reported


async def test_a_server_stopping_while_frames_are_applied_stops_promptly(settings: Settings, farm: Farm) -> None:
    """Shutdown with an agent's frames still queued: bounded, nothing left hanging or locked."""
    owner = await farm.member()
    printer = await farm.printer(owner)
    t1 = 1_700_000_000

    def busy_server_stops() -> None:
        with TestClient(create_app(settings)) as test_client, \
                test_client.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
            ws.receive_json()
            for n in range(60):
                event = "PrintStarted" if n == 0 else ("PrintPaused" if n % 7 == 0 else None)
                ws.send_json(frame(_at(status("Printing", printing=True, file="a.gcode"), n), ts=t1, event=event))
            # Leave at once: the server stops with most of those frames not applied yet.

    stopped = threading.Thread(target=busy_server_stops, daemon=True)
    started = time.monotonic()
    stopped.start()
    await asyncio.to_thread(stopped.join, 40)
    assert not stopped.is_alive(), "the server did not stop"
    assert time.monotonic() - started < 30
    # Nothing was left locked or half-written: the database takes writes, and the printer is
    # not shown online by a server that has stopped.
    await until(lambda: _offline(farm, printer.id))
    async with farm.sessionmaker() as session:
        await session.execute(update(Printer).where(Printer.id == printer.id).values(name="still writable"))
        await session.commit()


async def test_plain_statuses_never_land_after_a_later_event(server: TestClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    t1 = 1_700_000_000
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        ws.send_json(frame(status("Printing", printing=True, file="a.gcode"), ts=t1, event="PrintStarted"))
        for n in range(20):  # plain statuses: batched
            ws.send_json(frame(_at(status("Printing", printing=True, file="a.gcode"), n), ts=t1))

        async def newest_written() -> bool:
            reported = (await load_printer(farm, printer.id)).status or {}
            return bool(reported.get("progress", {}).get("completion") == 19)

        await until(newest_written)
        ws.send_json(frame(status("Paused", paused=True, file="a.gcode"), ts=t1, event="PrintPaused"))
        await until(lambda: _status_is(farm, printer.id, t1, "Paused"))
        # Well after the writer's batch interval: no older "Printing" status overwrote the pause.
        await asyncio.sleep(0.8)
        assert await _status_is(farm, printer.id, t1, "Paused")
        assert [e.event_type for e in await events_of(farm, printer.id)] == ["PRINT_PAUSED"]


async def _farm_job(farm: Farm, printer: Any, owner: Any, remote: str) -> int:
    from layerfleet.library import service as library
    from layerfleet.library.models import Build
    from layerfleet.scheduling.models import PrintJob

    async with farm.sessionmaker() as session:
        preset = await library.default_preset(session)
        build = Build(organization_id=owner.user.organization_id, user_id=owner.user.id, title="b",
                      settings_preset_id=preset.id, part_count=1, gcode_path="gcode/b.gcode")
        session.add(build)
        await session.flush()
        job = PrintJob(organization_id=owner.user.organization_id, build_id=build.id, printer_id=printer.id,
                       origin="direct", state="Printing", remote_filename=remote, queued_at=utcnow())
        session.add(job)
        await session.commit()
        return job.id


async def _job_print(farm: Farm, job_id: int) -> int | None:
    from layerfleet.scheduling.models import PrintJob

    async with farm.sessionmaker() as session:
        job = await session.get(PrintJob, job_id)
        assert job is not None
        return job.print_id


@pytest.mark.parametrize("lag", ["in the start event's status", "until a later message"])
async def test_a_farm_job_is_recognised_when_the_status_lags_behind(server: TestClient, farm: Farm, lag: str) -> None:
    """OctoPrint printing two jobs in a row may report the previous file with the new print."""
    owner = await farm.member()
    printer = await farm.printer(owner)
    job_id = await _farm_job(farm, printer, owner, "lf-b-12345678.gcode")
    t1 = 1_700_000_000
    stale = status("Printing", printing=True, file="lf-a-87654321.gcode")
    with server.websocket_connect("/ws/dev/", headers=bearer(printer)) as ws:
        ws.receive_json()
        if lag == "in the start event's status":
            ws.send_json({"status": stale, "current_print_ts": t1,
                          "event": {"event_type": "PrintStarted", "data": {"name": "lf-b-12345678.gcode"}}})
        else:
            ws.send_json(frame(stale, ts=t1))
            await until(lambda: _count_prints(farm, printer.id, 1))
            ws.send_json(frame(status("Paused", paused=True, file="lf-b-12345678.gcode"), ts=t1,
                               event="PrintPaused"))
        await until(lambda: _job_print(farm, job_id))
    prints = await prints_of(farm, printer.id)
    assert [p.filename for p in prints] == ["lf-b-12345678.gcode"]
    assert await _job_print(farm, job_id) == prints[0].id
