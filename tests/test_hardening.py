"""What a careless or hostile client can send: every class of input that answered 500, grew the
server's memory or got past a limit before, on SQLite and PostgreSQL (issue: Hardening)."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import PRINTING, Farm
from layerfleet.accounts.models import Role
from layerfleet.api import body_limits
from layerfleet.serving import MAX_HEAD_BYTES, EscapeControlCharacters
from layerfleet.web import auth as sign_in

NUL = "\x00"


# --- text PostgreSQL cannot store: one rule on both databases ------------------------------------

async def test_a_printer_name_with_nul_is_a_400_and_changes_nothing(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "MK4")
    for body in ('{"name": "MK\\u00004"}', '{"name": "MK\\ud8004"}'):
        response = await client.patch(f"/api/v1/printers/{printer.id}/", content=body,
                                      headers={**owner.headers, "Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        assert "name" in response.json() or "NUL" in response.json()["detail"], response.text
    listed = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert listed["name"] == "MK4"


async def test_signing_in_with_nul_is_refused_like_a_wrong_password(client: httpx.AsyncClient, farm: Farm) -> None:
    member = await farm.member()
    for email, password in ((f"a{NUL}@example.com", "x"), (member.user.email, f"pass{NUL}word")):
        answer = await client.post("/accounts/login/", data={"email": email, "password": password})
        assert answer.status_code == 400 and "do not match" in answer.text


async def test_the_agents_printer_patch_with_nul_is_a_400(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "MK4")
    headers = {"Authorization": f"Token {printer.auth_token}"}
    body = '{"status": {"state": {"text": "Printing"}}, "settings": {"webcam": {}}, "agent": {"name": "x\\u0000"}}'
    response = await client.patch("/api/v1/octo/printer/", headers={**headers, "Content-Type": "application/json"},
                                  content=body)
    assert response.status_code in (200, 400)
    assert response.status_code != 500


# --- bodies are bounded, and read only with credentials -------------------------------------------

async def test_a_body_without_credentials_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(100):
            read += 1
            yield b"x" * 65536

    response = await client.patch("/api/v1/printers/1/", content=body())
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert read <= 1  # httpx may have started the upload; the server read none of it
    eiger = await client.post("/api/v3/builds", content=b"{}" * 1000)
    assert eiger.status_code == 401 and "HTTP Basic" in eiger.json()["message"]


async def test_a_declared_body_over_the_cap_is_refused_at_once(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers,
                                  content=b"{" + b" " * (body_limits.DEFAULT_LIMIT + 10) + b"}")
    assert response.status_code == 413
    assert "1 MiB" in response.json()["detail"]


async def test_a_chunked_body_is_cut_off_at_the_cap(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        for _ in range(64):  # 4 MiB, more than the 1 MiB cap
            sent += 65536
            yield b"a" * 65536
        yield b'"}'

    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers, content=body())
    assert response.status_code == 413
    assert (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()["name"] == "MK4"


async def test_a_chunked_stl_upload_is_cut_off_while_streaming(client: httpx.AsyncClient, farm: Farm,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from test_eiger_api import assert_error, basic

    monkeypatch.setattr(body_limits, "LARGER_LIMITS", (("/api/v3/parts/upload_stl", 2 * body_limits.MiB),))
    headers = await basic(farm, await farm.member())
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"--b\r\nContent-Disposition: form-data; name=\"stlFile\"; filename=\"a.stl\"\r\n\r\n"
        for _ in range(64):  # 4 MiB of a model, twice the cap
            sent += 65536
            yield b"\x00" * 65536
        yield b"\r\n--b--\r\n"

    response = await client.post("/api/v3/parts/upload_stl", content=body(),
                                 headers={**headers, "Content-Type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "larger than 2 MiB")
    from sqlalchemy import func, select

    from layerfleet.library.models import Part

    async with farm.sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(Part))).scalar_one() == 0


# --- the sign-in throttle -------------------------------------------------------------------------

async def test_signing_in_to_ones_own_account_does_not_reset_guesses_at_another(
        client: httpx.AsyncClient, farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    from layerfleet.ratelimit import RateLimiter

    monkeypatch.setattr(sign_in, "throttle", RateLimiter(sign_in.LOGIN_ATTEMPTS, sign_in.LOGIN_WINDOW_SECONDS))
    attacker = await farm.member()
    victim = await farm.member(Role.ADMIN)
    refused = 0
    for guess in range(30):
        answer = await client.post("/accounts/login/", data={"email": victim.user.email, "password": f"guess-{guess}"})
        refused += answer.status_code == 429
        client.cookies.clear()
        own = await client.post("/accounts/login/", data={"email": attacker.user.email, "password": "password-123"})
        client.cookies.clear()
        assert own.status_code in (303, 429)
    assert refused >= 20  # at most ten guesses got through


async def test_forwarded_for_is_not_believed_from_an_unconfigured_proxy(live_url: str, farm: Farm,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from layerfleet.ratelimit import RateLimiter

    monkeypatch.setattr(sign_in, "throttle", RateLimiter(3, 600))
    member = await farm.member()
    async with httpx.AsyncClient(base_url=live_url) as client:
        codes = []
        for n in range(6):
            answer = await client.post("/accounts/login/", headers={"X-Forwarded-For": f"10.0.0.{n}"},
                                       data={"email": f"nobody{n}@example.com", "password": "x"})
            codes.append(answer.status_code)
        assert codes[:3] == [400, 400, 400] and codes[3:] == [429, 429, 429]
        assert member  # the farm's database is the live server's


# --- bounded request heads ------------------------------------------------------------------------

async def test_a_huge_header_is_refused_and_the_server_keeps_answering(live_url: str, farm: Farm) -> None:
    member = await farm.member()
    host, port = live_url.removeprefix("http://").split(":")

    def send_huge_header() -> bytes:
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"GET /api/v1/printers/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token ")
            try:
                for _ in range(64 * 16):  # up to 64 MB
                    conn.sendall(b"a" * 65536)
            except OSError:
                pass  # the server closed the connection: that is the point
            conn.settimeout(5)
            return conn.recv(100)

    answer = await asyncio.to_thread(send_huge_header)
    assert answer.startswith(b"HTTP/1.1 431")
    async with httpx.AsyncClient(base_url=live_url) as client:
        assert (await client.get("/api/v1/printers/", headers=member.headers)).status_code == 200
        headers = {f"X-Padding-{n}": "x" for n in range(200)}
        assert (await client.get("/api/v1/printers/", headers={**member.headers, **headers})).status_code in (400, 431)
        fine = {"X-Padding": "x" * (MAX_HEAD_BYTES // 2)}
        assert (await client.get("/api/v1/printers/", headers={**member.headers, **fine})).status_code == 200


# --- what the answers and logs say ------------------------------------------------------------------

async def test_a_405_lists_every_method_the_path_answers(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    response = await client.post(f"/api/v1/printers/{printer.id}/", headers=owner.headers)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    eiger = await client.post("/api/v3/builds/approved", auth=("k", "s"))
    assert eiger.status_code == 405 and set(eiger.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}


def test_control_characters_from_a_client_are_escaped_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s" %d',
                               ("1.2.3.4", "GET", "/a\r\n2026-12-03 ERROR forged line\x1b[2J", 404), None)
    EscapeControlCharacters().filter(record)
    line = record.getMessage()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\\x0d\\x0a2026-12-03 ERROR forged line\\x1b[2J" in line


async def test_archived_at_takes_only_iso_8601_text_or_null(client: httpx.AsyncClient, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    for value in ("2026", 2026, 1.5e9, True, "9999-12-31T23:59:59-10:00"):
        response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers,
                                      json={"archived_at": value})
        assert response.status_code == 400, value
        assert "archived_at" in response.json()
    still: dict[str, Any] = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert still["archived_at"] is None
    ok = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers,
                            json={"archived_at": "2026-01-31T12:00:00Z"})
    assert ok.status_code == 200 and ok.json()["archived_at"].startswith("2026-01-31T12:00:00")


# --- Eiger v3: every value a client can send is a 400 naming the parameter -----------------------

EIGER_LISTS_WITH_DATES = ("/api/v3/print_jobs", "/api/v3/builds", "/api/v3/users", "/api/v3/devices",
                          "/api/v3/printed_parts")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
                                    "0001-01-01T00:00:00+23:59"])
async def test_dates_at_the_ends_of_the_calendar_are_a_400(client: httpx.AsyncClient, farm: Farm, moment: str) -> None:
    from test_eiger_api import assert_error, basic

    headers = await basic(farm, await farm.member())
    for path in EIGER_LISTS_WITH_DATES:
        response = await client.get(path, headers=headers, params={"filter[created_at][gt]": moment})
        assert_error(response, 400, "filter[created_at][gt]")


async def test_nul_in_an_eiger_filter_is_a_400(client: httpx.AsyncClient, farm: Farm) -> None:
    from test_eiger_api import basic

    headers = await basic(farm, await farm.member())
    response = await client.get("/api/v3/users", headers=headers, params={"filter[name][eq]": f"a{NUL}b"})
    assert response.status_code == 400 and "NUL" in response.json()["message"]


async def test_a_viewer_cannot_upload_an_stl(client: httpx.AsyncClient, farm: Farm) -> None:
    from test_eiger_api import assert_error, basic
    from test_slicing import cube_triangles, write_binary_stl

    await farm.member()
    viewer = await basic(farm, await farm.member(Role.VIEWER))
    with tempfile.TemporaryDirectory() as folder:
        stl = write_binary_stl(Path(folder) / "cube.stl", cube_triangles())
        response = await client.post("/api/v3/parts/upload_stl", headers=viewer,
                                     files={"stlFile": ("cube.stl", stl.read_bytes(), "model/stl")})
    assert_error(response, 403, "operator")


async def test_withdrawing_another_organizations_build_is_a_404(client: httpx.AsyncClient, farm: Farm) -> None:
    from layerfleet.library import service as library
    from layerfleet.library.models import Build
    from test_eiger_api import assert_error, basic

    other = await farm.member(organization="Farm B")
    async with farm.sessionmaker() as session:
        preset = await library.default_preset(session)
        build = Build(organization_id=other.user.organization_id, user_id=other.user.id, title="theirs",
                      settings_preset_id=preset.id)
        session.add(build)
        await session.commit()
        their_build = build.uuid
    mine = await basic(farm, await farm.member(organization="Farm A"))
    assert_error(await client.delete(f"/api/v3/job-requests/{their_build}", headers=mine), 404)


# --- a printer's token is an agent credential -------------------------------------------------------

async def test_only_admins_see_a_printers_agent_token(client: httpx.AsyncClient, farm: Farm) -> None:
    admin = await farm.member(Role.ADMIN)
    printer = await farm.printer(admin)
    for role in (Role.VIEWER, Role.OPERATOR):
        member = await farm.member(role)
        listed = (await client.get("/api/v1/printers/", headers=member.headers)).json()
        assert [p["auth_token"] for p in listed] == [None]
        one = (await client.get(f"/api/v1/printers/{printer.id}/", headers=member.headers)).json()
        assert one["auth_token"] is None
        assert (await client.post(f"/api/v1/printers/{printer.id}/rotate_token/", headers=member.headers)).status_code \
            == 403
    assert (await client.get(f"/api/v1/printers/{printer.id}/", headers=admin.headers)).json()["auth_token"] \
        == printer.auth_token
    stranger = await farm.member(Role.ADMIN, organization="Farm B")
    assert (await client.post(f"/api/v1/printers/{printer.id}/rotate_token/", headers=stranger.headers)).status_code \
        == 404


def test_rotating_the_token_disconnects_the_agent_that_holds_the_old_one(settings: Any, app: Any) -> None:
    # ``app``: only so that the tables are emptied after this test, as after the others.
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from layerfleet.app import create_app

    with TestClient(create_app(settings)) as server:
        farm = Farm(server.app)
        admin = server.portal.call(farm.member, Role.ADMIN)  # type: ignore[union-attr]
        printer = server.portal.call(farm.printer, admin)  # type: ignore[union-attr]
        old = {"Authorization": f"Token {printer.auth_token}"}
        with server.websocket_connect("/ws/dev/", headers=old) as ws:
            ws.receive_json()  # remote_status: connected
            rotated = server.post(f"/api/v1/printers/{printer.id}/rotate_token/", headers=admin.headers)
            assert rotated.status_code == 200 and rotated.json()["succeeded"] is True
            new_token = rotated.json()["printer"]["auth_token"]
            assert new_token and new_token != printer.auth_token
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 4401
        assert server.get("/api/v1/octo/printer/", headers=old).status_code == 401
        assert server.get("/api/v1/octo/printer/", headers={"Authorization": f"Token {new_token}"}).status_code == 200


async def test_nul_in_any_printwatch_call_is_a_bad_payload_answer(client: httpx.AsyncClient, farm: Farm) -> None:
    from test_printwatch import infer_payload, issue, post

    key = await issue(farm, await farm.member())
    for path, body in (("/api/v2/infer", infer_payload(key, printer_id=f"printer{NUL}1")),
                       ("/api/v2/heartbeat", {"api_key": key, "printer_id": f"p{NUL}", "state": 0}),
                       ("/api/v2/notify", {"api_key": key, "printer_id": "p1", "notification": f"x{NUL}",
                                           "email_addr": "a@example.com"}),
                       ("/api/v2/infer", infer_payload(f"key{NUL}"))):
        answer = await post(client, path, body)
        assert answer["statusCode"] in (215, 217), (path, answer)
