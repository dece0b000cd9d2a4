"""Replays the real capture of OctoPrint-Obico 2.6.1 talking to a server against ours: every
agent→server HTTP request and websocket frame, in order, and the replies the plugin needs."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from agent_helpers import events_of, jpeg, load_printer, next_command, prints_of, until
from conftest import Farm
from layerfleet.app import create_app
from layerfleet.config import Settings

TRANSCRIPT = Path(__file__).resolve().parents[2] / "shared" / "protocols" / "obico-agent-transcript.jsonl"

pytestmark = pytest.mark.skipif(not TRANSCRIPT.exists(), reason="the protocol capture is not beside the repository")


@pytest.fixture
def server(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in TRANSCRIPT.read_text().splitlines() if line.strip()]


def _request(server: TestClient, record: dict[str, Any], token: str, path: str) -> Any:
    headers = {"Authorization": f"Token {token}"} if "Authorization" in record["headers"] else {}
    url = path + (f"?{record['query']}" if record["query"] else "")
    body = record["body"] or {}
    if "multipart" in body:
        data = {part["name"]: part["value"] for part in body["multipart"] if "value" in part}
        # The capture keeps only the size and first bytes of pictures; any real JPEG will do.
        files = {part["name"]: (part["filename"], jpeg(160, 120)) for part in body["multipart"] if "filename" in part}
        for part in body["multipart"]:
            if "magic" in part:
                assert part["magic"].startswith("ffd8ff")
        return server.request(record["method"], url, headers=headers, data=data, files=files)
    if "form" in body:
        return server.request(record["method"], url, headers=headers, data=body["form"])
    return server.request(record["method"], url, headers=headers)


class Replay:
    """The replay's state: the capture's ids and refs mapped to ours, and the agent's socket."""

    def __init__(self, server: TestClient, farm: Farm, owner: Any, printer: Any) -> None:
        self.server, self.farm, self.owner, self.printer = server, farm, owner, printer
        self.gcode_ids: dict[int, int] = {}
        self.refs: dict[str, str] = {}
        self.pending_calls: list[Any] = []
        self.ws: Any = None
        self.first_server_frame: dict[str, Any] | None = None
        self.last_status: dict[str, Any] | None = None

    async def caught_up(self) -> bool:
        return (await load_printer(self.farm, self.printer.id)).status == self.last_status

    def close(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            ws.__exit__(None, None, None)

    async def http(self, record: dict[str, Any], recorded_printer_id: int) -> None:
        printer = self.printer
        path = record["path"].replace(f"/printers/{recorded_printer_id}/", f"/printers/{printer.id}/")
        response = _request(self.server, record, printer.auth_token, path)
        expected = record["response"]
        assert response.status_code // 100 == expected["status"] // 100, (path, response.text)
        body = response.json()
        if path == "/api/v1/octo/printer/":
            assert body["printer"]["id"] == printer.id and "is_pro" in body["printer"]
            assert "is_pro" in body["user"]
            assert body["printer"]["retract_on_pause"] == expected["json"]["printer"]["retract_on_pause"]
        elif path == "/api/v1/octo/g_code_files/":
            assert isinstance(body["id"], int)
            self.gcode_ids[expected["json"]["id"]] = body["id"]
        elif path in {"/api/v1/octo/pic/", "/api/v1/octo/printer_events/"}:
            assert body == {"result": "ok"}
        else:
            assert body == expected["json"]

    def agent_frame(self, record: dict[str, Any]) -> None:
        message = copy.deepcopy(record["msg"])
        file = (message.get("status") or {}).get("job", {}).get("file") or {}
        if "obico_g_code_file_id" in file:
            file["obico_g_code_file_id"] = self.gcode_ids[file["obico_g_code_file_id"]]
        passthru = message.get("passthru") or {}
        if "ref" in passthru:
            passthru["ref"] = self.refs[passthru["ref"]]
        if "status" in message:
            self.last_status = message["status"]
        self.ws.send_json(message)

    async def server_frame(self, record: dict[str, Any]) -> None:
        sent = record["msg"]
        if "commands" in sent:
            # The capture's commands came from a person pressing a button: press it through our API.
            await until(self.caught_up)
            command = sent["commands"][0]["cmd"]
            response = self.server.post(f"/api/v1/printers/{self.printer.id}/{command}_print",
                                        headers=self.owner.headers)
            assert response.json()["succeeded"] is True, (command, response.text)
            received = next_command(self.ws)["commands"][0]
            assert (received["cmd"], received["initiator"]) == (command, "api")
        elif "passthru" in sent:
            call = sent["passthru"]
            gateway = self.server.app.state.services.agent_gateway  # type: ignore[attr-defined]
            printer_id = self.printer.id

            async def remote_call() -> Any:
                return await gateway.call(printer_id, call["func"], *call["args"], target=call["target"],
                                          **call["kwargs"])

            self.pending_calls.append(self.server.portal.start_task_soon(remote_call))  # type: ignore[union-attr]
            ours = next_command(self.ws)["passthru"]
            assert (ours["target"], ours["func"]) == (call["target"], call["func"])
            self.refs[call["ref"]] = ours["ref"]
        # remote_status changes of the capture came from a viewer of its web app; ours has none.

    async def run(self, records: list[dict[str, Any]]) -> None:
        recorded_token = records[0]["token"]
        recorded_printer_id = next(r["response"]["json"]["printer"]["id"] for r in records
                                   if r["kind"] == "http" and r["path"] == "/api/v1/octo/printer/")
        for record in records:
            kind = record["kind"]
            if kind == "http":
                authorization = record["headers"].get("Authorization")
                assert authorization is None or authorization.endswith(recorded_token)
                await self.http(record, recorded_printer_id)
            elif kind == "ws_connect":
                self.ws = self.server.websocket_connect(
                    record["path"], headers={"Authorization": f"bearer {self.printer.auth_token}"})
                self.ws.__enter__()
                self.first_server_frame = self.ws.receive_json()
            elif kind == "ws" and record["dir"] == "in":
                self.agent_frame(record)
            elif kind == "ws" and record["dir"] == "out":
                await self.server_frame(record)
            elif kind == "ws_close":
                await until(self.caught_up)
                self.close()


async def test_replay_of_the_octoprint_obico_capture(server: TestClient, farm: Farm) -> None:
    records = _records()
    owner = await farm.member()
    printer = await farm.printer(owner, "standin-printer")
    replay = Replay(server, farm, owner, printer)
    try:
        await replay.run(records)
    finally:
        replay.close()

    first = replay.first_server_frame
    assert first is not None and set(first) == {"remote_status"}
    assert set(first["remote_status"]) >= {"viewing", "should_watch"}
    reply = next(r["msg"]["passthru"]["ret"] for r in records
                 if r["kind"] == "ws" and r["dir"] == "in" and "ref" in (r["msg"].get("passthru") or {}))
    assert [call.result(timeout=5) for call in replay.pending_calls] == [reply]

    prints = await prints_of(farm, printer.id)
    assert [p.filename for p in prints] == ["short_job.gcode", "long_job.gcode"]
    short, long = prints
    assert short.finished_at is not None and short.cancelled_at is None
    assert long.cancelled_at is not None and long.finished_at is None
    assert [short.gcode_file_id, long.gcode_file_id] == list(replay.gcode_ids.values())
    stored = await load_printer(farm, printer.id)
    assert stored.current_print_id is None
    assert stored.settings["agent_name"] == "octoprint_obico" and stored.settings["agent_version"] == "2.6.1"
    assert [p["name"] for p in stored.settings["temp_profiles"]] == ["ABS", "PLA"]
    assert stored.pic_path is not None
    events = [(e.event_type, e.print_id) for e in await events_of(farm, printer.id)]
    assert events == [("PRINTER_ERROR", None), ("PRINT_PAUSED", long.id), ("PRINT_RESUMED", long.id)]
    await until(lambda: _offline(farm, printer.id))


async def _offline(farm: Farm, printer_id: int) -> bool:
    return (await load_printer(farm, printer_id)).status is None
