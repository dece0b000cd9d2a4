"""Notifications with real parts: an SMTP server (aiosmtpd) receives a FailureAlert with the
picture and one-tap links; the Resume link's page acts only when its button is pressed, once;
MQTT events reach a subscriber on the real Mosquitto; a signed webhook verifies; Apprise's
json:// reaches a local receiver; and the targets API."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import io
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from PIL import Image
from sqlalchemy import select

from agent_helpers import jpeg, status
from conftest import PAUSED, Farm, Member, local_port_answers
from layerfleet.accounts.models import Role
from layerfleet.agents import lifecycle
from layerfleet.commands.bus import AgentCommand
from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.fleet.models import Printer
from layerfleet.notifications import action_links, outbox, secrets
from layerfleet.notifications.action_links import LinkAction
from layerfleet.notifications.models import Delivery, NotificationEvent, NotificationTarget
from layerfleet.prints.models import Print
from test_watching import CLEAN_P, FAILING_P, Watch, watched_printer

MOSQUITTO_PORT = 1883


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- real receivers ---------------------------------------------------------------------------------

@dataclass
class Mailbox:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 Message accepted"

    def url(self, to: str = "ops@example.com") -> str:
        return f"mailto://127.0.0.1:{self.port}?from=layerfleet@example.com&to={to}&mode=insecure"

    def wait(self, count: int = 1, timeout: float = 15.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


def _accept_alice(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=auth_data.login == b"alice" and auth_data.password == b"hunter2-secret")


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    # Login over plain SMTP is accepted here (a local test server); real targets use mailtos://.
    controller = Controller(box, hostname="127.0.0.1", port=box.port, authenticator=_accept_alice,
                            auth_require_tls=False)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A local HTTP server that records what is POSTed to it; ``hang`` makes it never answer."""

    def __init__(self, *, hang: bool = False, status: int = 200, port: int = 0) -> None:
        self.received: list[Received] = []
        self.hang = hang
        self.status = status
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.hang:
                    receiver._release.wait(60)
                    return
                receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                  body, time.monotonic()))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


# --- helpers ------------------------------------------------------------------------------------------

async def make_target(client: httpx.AsyncClient, member: Member, url: str, events: list[str],
                      **fields: Any) -> dict[str, Any]:
    answer = await client.post("/api/v1/notification_targets/", headers=member.headers,
                               json={"url": url, "events": events, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def agent_sends(farm: Farm, printer: Printer, event_type: str | None = None, **parts: Any) -> None:
    """An agent's message about ``printer``, applied as the gateway applies it."""
    async def apply(session: Any) -> None:
        stored = await session.get(Printer, printer.id)
        await lifecycle.apply_update(session, stored, lifecycle.AgentUpdate(event_type=event_type, **parts), utcnow())
        await session.commit()

    await farm.run(apply)


def notifier_of(farm: Farm) -> Any:
    return farm.app.state.services.notifier


async def deliver(farm: Farm) -> int:
    return await notifier_of(farm).run_once()  # type: ignore[no-any-return]


async def deliveries(farm: Farm) -> list[Delivery]:
    async def get(session: Any) -> list[Delivery]:
        return list((await session.execute(select(Delivery).order_by(Delivery.id))).scalars())

    return await farm.run(get)  # type: ignore[no-any-return]


def red_share(picture: bytes, box: tuple[int, int, int, int]) -> float:
    """How much of the box's outline is drawn red (the detector's boxes)."""
    image = Image.open(io.BytesIO(picture)).convert("RGB")
    x0, y0, x1, y1 = box
    edge = [(x, y0) for x in range(x0, x1)] + [(x0, y) for y in range(y0, y1)]
    red = sum(1 for xy in edge if (p := image.getpixel(xy)) and p[0] > 180 and p[1] < 110 and p[2] < 110)  # type: ignore[index]
    return red / len(edge)


# --- FailureAlert by email, with the picture and a one-tap Resume ------------------------------------

async def test_a_failure_alert_email_carries_the_picture_and_a_resume_link_that_acts_once(
        farm: Farm, client: httpx.AsyncClient, settings: Settings, mailbox: Mailbox) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, mailbox.url(), ["FailureAlert", "FailureWarning"], name="Night shift")
    printer, print_, agent = await watched_printer(farm, admin, name="Prusa XL")
    watch = Watch(farm, settings, printer)
    watch.picture = jpeg(640, 480, (120, 120, 120))
    await watch.frames(CLEAN_P, 40)
    await watch.frames(FAILING_P, 12)
    assert [c.cmd for c in agent.received if isinstance(c, AgentCommand)] == ["pause"]

    await deliver(farm)
    messages = await asyncio.to_thread(mailbox.wait, 2)
    alert = next(m for m in messages if "failing, paused" in str(m["subject"]))
    assert "Prusa XL" in str(alert["subject"])
    text = alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "File: part.gcode" in text and "The print was paused." in text and "Likelihood of failure" in text
    pictures = [part for part in alert.iter_attachments() if part.get_content_type() == "image/jpeg"]
    assert len(pictures) == 1
    # The detector's box (320, 240, 60 × 40) is drawn on the attached frame.
    assert red_share(pictures[0].get_content(), (291, 221, 349, 259)) > 0.8
    resume = re.search(r"Resume the print: http://[^/\s]+(/a/[A-Za-z0-9_-]+)", text)
    assert resume is not None and "Cancel the print:" in text and "Looks OK: mute this print:" in text
    link = resume.group(1)

    # Opening the link (as a mail scanner would) shows one button and changes nothing.
    page = await client.get(link)
    assert page.status_code == 200
    main = page.text.split('<main id="main">', 1)[1].split("</main>", 1)[0]
    assert main.count("<button") == 1 and main.count("<form") == 1 and 'method="post"' in main
    assert "Resume the print" in main
    assert [c.cmd for c in agent.received if isinstance(c, AgentCommand)] == ["pause"]

    # The agent reports the pause; pressing the button resumes through the command path.
    await agent_sends(farm, printer, status=PAUSED)
    pressed = await client.post(link)
    assert pressed.status_code == 200 and "The print is resuming." in pressed.text
    assert [c.cmd for c in agent.received if isinstance(c, AgentCommand)] == ["pause", "resume"]
    stored = await farm.run(lambda s: s.get(Print, print_.id))
    assert stored.alert_overwrite == "NOT_FAILED"  # recorded as the API's resume_print records it

    again = await client.post(link)
    assert again.status_code == 410 and "already been used" in again.text
    assert (await client.get(link)).status_code == 410
    assert [c.cmd for c in agent.received if isinstance(c, AgentCommand)] == ["pause", "resume"]
    assert (await client.get("/a/" + "x" * 43)).status_code == 404


async def test_an_expired_link_is_refused(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    printer = await farm.printer(admin, status=PAUSED)
    print_ = await farm.print(printer, current=True)
    agent = await farm.connect_agent(printer)

    async def issue(session: Any) -> str:
        link = await action_links.issue(session, "http://testserver", organization_id=printer.organization_id,
                                        printer_id=printer.id, print_id=print_.id, action=LinkAction.RESUME,
                                        now=utcnow() - timedelta(hours=25))
        await session.commit()
        return link.url.removeprefix("http://testserver")

    path = await farm.run(issue)
    answer = await client.post(path)
    assert answer.status_code == 410 and "expired" in answer.text
    assert agent.received == []


# --- MQTT on the real Mosquitto ------------------------------------------------------------------------

def mosquitto_or_skip() -> None:
    if local_port_answers(MOSQUITTO_PORT):
        return
    reason = "Mosquitto does not answer at 127.0.0.1:1883 (.ci/run and scripts/setup-real-parts start it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def test_mqtt_events_reach_a_home_assistant_style_subscriber(
        farm: Farm, client: httpx.AsyncClient) -> None:
    mosquitto_or_skip()
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, f"mqtt://127.0.0.1:{MOSQUITTO_PORT}/layerfleet/{{printer}}/event",
                      ["PrintDone", "PrintPaused"])
    printer, print_, _ = await watched_printer(farm, admin, name="Voron 2.4")
    got: list[tuple[str, dict[str, Any]]] = []
    subscribed, two = threading.Event(), threading.Event()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        got.append((message.topic, json.loads(message.payload)))
        if len(got) >= 2:
            two.set()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lf-test-{uuid.uuid4().hex[:8]}")
    subscriber.on_connect = lambda c, *_: c.subscribe(f"layerfleet/{printer.id}/event", qos=1)
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.on_message = on_message
    subscriber.connect("127.0.0.1", MOSQUITTO_PORT)
    subscriber.loop_start()
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)

        await agent_sends(farm, printer, "PrintPaused")
        await agent_sends(farm, printer, "PrintDone")
        await deliver(farm)
        await asyncio.to_thread(two.wait, 10)
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
    mine = [(topic, body) for topic, body in got if body.get("print_id") == print_.id]
    assert [topic for topic, _ in mine] == [f"layerfleet/{printer.id}/event"] * 2
    assert sorted(body["event"] for _, body in mine) == ["PrintDone", "PrintPaused"]
    assert all(body["printer_name"] == "Voron 2.4" and body["idempotency_key"] for _, body in mine)


# --- signed webhook and Apprise json:// -----------------------------------------------------------------

async def test_a_signed_webhook_verifies_on_the_receiver(
        farm: Farm, client: httpx.AsyncClient, receiver: Receiver) -> None:
    admin = await farm.member(Role.ADMIN)
    target = await make_target(client, admin, f"webhook+http://127.0.0.1:{receiver.port}/hooks/layerfleet",
                               ["PrintDone"])
    secret = target["webhook_secret"]
    assert secret and target["has_webhook_secret"]
    assert "webhook_secret" not in (await client.get(f"/api/v1/notification_targets/{target['id']}/",
                                                     headers=admin.headers)).json()
    printer, print_, _ = await watched_printer(farm, admin, name="MK4 #7")

    await agent_sends(farm, printer, "PrintDone")
    await deliver(farm)
    assert len(receiver.received) == 1
    hit = receiver.received[0]
    assert hit.path == "/hooks/layerfleet"
    expected = "sha256=" + hmac.new(secret.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(hit.headers["x-layerfleet-signature"], expected)
    assert not hmac.compare_digest(hit.headers["x-layerfleet-signature"],
                                   "sha256=" + hmac.new(b"another secret", hit.body, hashlib.sha256).hexdigest())
    body = hit.json()
    assert body["event"] == "PrintDone" and body["print_id"] == print_.id and body["printer_name"] == "MK4 #7"
    assert hit.headers["idempotency-key"] == body["idempotency_key"]
    # Sent is sent: another round finds nothing to do.
    assert await deliver(farm) == 0 and len(receiver.received) == 1
    assert [d.status for d in await deliveries(farm)] == ["sent"]


async def test_a_chat_url_through_apprise_json_reaches_a_local_receiver(
        farm: Farm, client: httpx.AsyncClient, receiver: Receiver) -> None:
    admin = await farm.member(Role.ADMIN)
    await make_target(client, admin, f"json://127.0.0.1:{receiver.port}/chat", ["PrintStarted"])
    printer = await farm.printer(admin, name="Bambu X1")

    await agent_sends(farm, printer, "PrintStarted", status=status("Printing", printing=True, file="benchy.gcode"),
                      current_print_ts=int(time.time()))
    await deliver(farm)
    assert len(receiver.received) == 1
    body = receiver.received[0].json()
    assert receiver.received[0].path == "/chat"
    assert body["title"] == "Bambu X1: print started" and "File: benchy.gcode" in body["message"]


async def test_a_refusing_service_is_retried_with_backoff_and_its_error_logged(
        farm: Farm, client: httpx.AsyncClient) -> None:
    refusing = Receiver(status=500)
    try:
        admin = await farm.member(Role.ADMIN)
        target = await make_target(client, admin, f"webhook+http://127.0.0.1:{refusing.port}/h", ["PrintDone"])
        printer, _, _ = await watched_printer(farm, admin)

        await agent_sends(farm, printer, "PrintDone")
        await deliver(farm)
        [delivery] = await deliveries(farm)
        assert delivery.status == "retrying" and delivery.attempts == 1
        assert "HTTP 500" in (delivery.last_error or "")
        wait = (delivery.next_attempt_at - delivery.created_at).total_seconds()
        assert 25 <= wait <= 35  # notification_retry_base_seconds
        assert await deliver(farm) == 0  # not due yet
        log = (await client.get(f"/api/v1/notification_targets/{target['id']}/deliveries/",
                                headers=admin.headers)).json()
        assert [(d["event"], d["status"], d["attempts"]) for d in log] == [("PrintDone", "retrying", 1)]
        assert "HTTP 500" in log[0]["last_error"]
    finally:
        refusing.close()


# --- the targets API ----------------------------------------------------------------------------------

async def test_targets_api_creates_lists_changes_tests_and_deletes(
        farm: Farm, client: httpx.AsyncClient, mailbox: Mailbox) -> None:
    admin = await farm.member(Role.ADMIN)
    url = f"mailto://alice:hunter2-secret@127.0.0.1:{mailbox.port}?from=lf@example.com&to=ops@example.com&mode=insecure"
    created = await client.post("/api/v1/notification_targets/", headers=admin.headers,
                                json={"url": url, "events": ["PrintDone"]})
    assert created.status_code == 201
    target = created.json()
    assert isinstance(target["id"], int) and target["enabled"] is True and target["scope"] == "organization"
    assert "hunter2" not in created.text and "alice:***@" in target["url"]

    listed = await client.get("/api/v1/notification_targets/", headers=admin.headers)
    assert [t["id"] for t in listed.json()] == [target["id"]] and "hunter2" not in listed.text

    changed = await client.patch(f"/api/v1/notification_targets/{target['id']}/", headers=admin.headers,
                                 json={"name": "Ops mail", "events": ["PrintDone", "FailureAlert"],
                                       "quiet_start": "22:00", "quiet_end": "07:00", "timezone": "Europe/Berlin"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Ops mail" and changed.json()["quiet_start"] == "22:00"
    assert changed.json()["events"] == ["PrintDone", "FailureAlert"]

    tested = await client.post(f"/api/v1/notification_targets/{target['id']}/test/", headers=admin.headers)
    assert tested.json() == {"sent": True, "error": None}
    [message] = await asyncio.to_thread(mailbox.wait, 1)
    assert "test message" in str(message["subject"])

    log = await client.get(f"/api/v1/notification_targets/{target['id']}/deliveries/", headers=admin.headers)
    assert [(d["event"], d["status"]) for d in log.json()] == [("Test", "sent")]

    gone = await client.delete(f"/api/v1/notification_targets/{target['id']}/", headers=admin.headers)
    assert gone.status_code == 204
    assert (await client.get(f"/api/v1/notification_targets/{target['id']}/", headers=admin.headers)
            ).status_code == 404


async def test_a_test_to_a_dead_service_answers_its_error_in_words(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    target = await make_target(client, admin, f"json://127.0.0.1:{free_port()}/nobody", ["PrintDone"])
    tested = await client.post(f"/api/v1/notification_targets/{target['id']}/test/", headers=admin.headers)
    assert tested.status_code == 200
    assert tested.json()["sent"] is False and "onnection" in tested.json()["error"]


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "definitely not a url", "events": ["PrintDone"]}, "url"),
    ({"url": "foo://bar", "events": ["PrintDone"]}, "url"),
    ({"url": "json://127.0.0.1:9/x", "events": ["PrintExploded"]}, "events"),
    ({"url": "json://127.0.0.1:9/x"}, "events"),
    ({"events": ["PrintDone"]}, "url"),
    ({"url": "json://127.0.0.1:9/x", "events": ["PrintDone"], "quiet_start": "25:00"}, "quiet_start"),
    ({"url": "json://127.0.0.1:9/x", "events": ["PrintDone"], "timezone": "Mars/Olympus"}, "timezone"),
    ({"url": "json://127.0.0.1:9/x", "events": ["PrintDone"], "printer_ids": [999999]}, "printer_ids"),
    ({"url": "json://127.0.0.1:9/x", "events": "PrintDone"}, "events"),
])
async def test_invalid_targets_are_a_400_naming_the_field(
        farm: Farm, client: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    admin = await farm.member(Role.ADMIN)
    answer = await client.post("/api/v1/notification_targets/", headers=admin.headers, json=body)
    assert answer.status_code == 400
    assert list(answer.json()) == [field] and answer.json()[field][0]
    assert (await client.get("/api/v1/notification_targets/", headers=admin.headers)).json() == []


async def test_targets_are_the_organizations_and_admins_manage_them(farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    operator = await farm.member(Role.OPERATOR)
    stranger = await farm.member(Role.OWNER, organization="Farm B")
    target = await make_target(client, admin, "json://127.0.0.1:9/x", ["PrintDone"])
    path = f"/api/v1/notification_targets/{target['id']}/"
    assert (await client.get(path, headers=stranger.headers)).status_code == 404
    assert (await client.patch(path, headers=stranger.headers, json={"enabled": False})).status_code == 404
    assert (await client.delete(path, headers=stranger.headers)).status_code == 404
    assert (await client.get("/api/v1/notification_targets/", headers=stranger.headers)).json() == []
    assert (await client.patch(path, headers=operator.headers, json={"enabled": False})).status_code == 403
    assert (await client.delete(path, headers=operator.headers)).status_code == 403
    refused = await client.post("/api/v1/notification_targets/", headers=operator.headers,
                                json={"url": "json://127.0.0.1:9/y", "events": ["PrintDone"]})
    assert refused.status_code == 403
    # Any member manages targets of their own.
    own = await client.post("/api/v1/notification_targets/", headers=operator.headers,
                            json={"url": "json://127.0.0.1:9/y", "events": ["PrintDone"], "scope": "user"})
    assert own.status_code == 201 and own.json()["scope"] == "user"
    own_path = f"/api/v1/notification_targets/{own.json()['id']}/"
    assert (await client.patch(own_path, headers=operator.headers, json={"enabled": False})).json()["enabled"] is False
    assert [t["id"] for t in (await client.get("/api/v1/notification_targets/", headers=operator.headers)).json()] \
        == [own.json()["id"]]
    assert (await client.get(own_path, headers=admin.headers)).status_code == 404  # the member's own
    assert (await client.get(path, headers=admin.headers)).json()["enabled"] is True


async def test_targets_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert {"get", "post"} <= set(schema["paths"]["/api/v1/notification_targets/"])
    assert {"get", "patch", "delete"} <= set(schema["paths"]["/api/v1/notification_targets/{target_id}/"])
    assert "post" in schema["paths"]["/api/v1/notification_targets/{target_id}/test/"]
    assert "get" in schema["paths"]["/api/v1/notification_targets/{target_id}/deliveries/"]
    assert "TargetCreate" in schema["components"]["schemas"]


async def test_events_nobody_wants_leave_no_outbox_rows(farm: Farm) -> None:
    admin = await farm.member(Role.ADMIN)

    async def record(session: Any) -> Any:
        return await outbox.record(session, organization_id=admin.user.organization_id,
                                   event=NotificationEvent.PRINT_DONE, payload={})

    assert await farm.run(record) is None


async def test_a_target_saved_under_another_server_key_says_so_instead_of_failing(
        farm: Farm, client: httpx.AsyncClient) -> None:
    admin = await farm.member(Role.ADMIN)
    target = await make_target(client, admin, "json://127.0.0.1:9/x", ["PrintDone"])

    async def rekey(session: Any) -> None:
        stored = await session.get(NotificationTarget, target["id"])
        stored.url_encrypted = secrets.encrypt("another server's key", "json://127.0.0.1:9/x")
        await session.commit()

    await farm.run(rekey)
    tested = await client.post(f"/api/v1/notification_targets/{target['id']}/test/", headers=admin.headers)
    assert tested.status_code == 200 and tested.json()["sent"] is False
    assert "LAYERFLEET_SECRET_KEY changed" in tested.json()["error"]
    printer, _, _ = await watched_printer(farm, admin)
    await agent_sends(farm, printer, "PrintDone")
    await deliver(farm)
    retrying = [d for d in await deliveries(farm) if d.status == "retrying"]
    assert len(retrying) == 1 and "enter its URL again" in (retrying[0].last_error or "")


# --- the same alert, for a printer of `layerfleet simulate` over its websocket ------------------------

async def test_an_emailed_resume_link_resumes_a_simulated_printer_over_its_websocket(
        farm: Farm, settings: Settings, mailbox: Mailbox, app: Any, tmp_path: Any) -> None:
    """The whole path with real parts: a simulated printer's agent (AgentRunner over the websocket,
    pictures through the upload endpoint) fails, the server's detector pauses it, the server's own
    notifier mails the alert to aiosmtpd, and the link's button resumes that printer."""
    from layerfleet.printer_agent.connector import PrinterState
    from layerfleet.printer_agent.runner import AgentRunner, Cadence, Stopped
    from layerfleet.simulator.printer import SimulatedCamera, SimulatedPrinter, SimulationOptions
    from live_server import LiveServer

    live_settings = settings.model_copy(update={
        "data_dir": tmp_path / "data", "detection_enabled": True, "detection_interval_seconds": 0.2,
        "unlimited_detection_hours": True, "notification_poll_seconds": 0.2})
    admin = await farm.member(Role.ADMIN)
    printer = await farm.printer(admin, name="Sim XL")
    simulated = SimulatedPrinter("Sim XL", SimulationOptions(
        speed=10.0, fail_rate=1.0, min_print_minutes=6, max_print_minutes=6, idle_seconds=(3600.0, 3600.0),
        heating_rate=20.0, first_print_preheated=True), seed=21)
    simulated.idle_left = 0.5
    cadence = Cadence(idle_status=1.0, active_status=0.3, watched_picture=0.3, unwatched_picture=0.3,
                      min_backoff=0.1, max_backoff=0.5, http_timeout=5.0)
    with LiveServer(live_settings) as url:
        runner = AgentRunner(url, printer.auth_token, simulated, SimulatedCamera(simulated), cadence=cadence)
        task = asyncio.create_task(runner.run())
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20) as web:
                await make_target(web, admin, mailbox.url(), ["FailureAlert"], name="Night shift")

                def state() -> PrinterState:
                    return simulated.state  # a call: the state changes between looks

                deadline = time.monotonic() + 90
                while state() is not PrinterState.PAUSED:
                    assert time.monotonic() < deadline, f"the detector did not pause it: {simulated.state}"
                    await asyncio.sleep(0.3)
                progress_when_paused = simulated.printed_seconds

                messages = await asyncio.to_thread(mailbox.wait, 1, 30.0)
                alert = next(m for m in messages if "failing, paused" in str(m["subject"]))
                assert "Sim XL" in str(alert["subject"])
                text = alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
                assert "The print was paused." in text
                assert any(p.get_content_type() == "image/jpeg" for p in alert.iter_attachments())
                resume = re.search(r"Resume the print: http://[^/\s]+(/a/[A-Za-z0-9_-]+)", text)
                assert resume is not None
                link = resume.group(1)

                # A mail scanner's GET leaves the printer paused.
                assert (await web.get(link)).status_code == 200
                await asyncio.sleep(1.0)
                assert state() is PrinterState.PAUSED

                pressed = await web.post(link)
                assert pressed.status_code == 200 and "The print is resuming." in pressed.text
                deadline = time.monotonic() + 20
                while not (state() is PrinterState.PRINTING
                           and simulated.printed_seconds > progress_when_paused):
                    assert time.monotonic() < deadline, f"the printer did not resume: {simulated.state}"
                    await asyncio.sleep(0.2)

                again = await web.post(link)
                assert again.status_code == 410 and "already been used" in again.text

                # Resumed as the API resumes: this print's alerts are muted, so it keeps printing.
                prints = (await web.get("/api/v1/prints/", headers=admin.headers)).json()
                assert prints[0]["alert_overwrite"] == "NOT_FAILED"
                await asyncio.sleep(3.0)
                assert state() is PrinterState.PRINTING
        finally:
            runner.stop()
            assert await asyncio.wait_for(task, 30) is Stopped.REQUESTED
