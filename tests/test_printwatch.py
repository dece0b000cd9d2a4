"""The PrintWatch inference API as its clients use it: every custom code under its condition,
real inference on rendered frames, bad pictures (210, never a 500), keys by REST and CLI."""

from __future__ import annotations

import base64
import io
import os
import random
import struct
import subprocess
import sys
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from conftest import Farm, Member
from layerfleet.accounts.models import Role, User
from layerfleet.api.printwatch import protocol
from layerfleet.database import create_engine, create_sessionmaker
from layerfleet.detection import ModelMissing
from layerfleet.printwatch import api_keys as keys
from layerfleet.printwatch.inference import PrintWatchInference
from layerfleet.printwatch.models import PrintWatchDevice, PrintWatchFeedback, PrintWatchKey, PrintWatchNotification
from layerfleet.simulator.render import Scene, render_frame

PRINTER = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
OTHER_PRINTER = "a" * 32


# --- pictures -------------------------------------------------------------------------------------

@cache
def jpeg(spaghetti: float = 0.0, width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    frame, _ = render_frame(Scene.random(random.Random(seed)), 0.5, spaghetti=spaghetti, seed=seed,
                            width=width, height=height)
    out = io.BytesIO()
    frame.save(out, format="JPEG", quality=90)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SPAGHETTI = b64(jpeg(1.0))
CLEAN = b64(jpeg(0.0))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels (with a valid checksum), over 1×1 data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\x00\xff\x00\x00")
    idat = struct.pack(">I", len(data)) + b"IDAT" + data + struct.pack(">I", zlib.crc32(b"IDAT" + data))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + end


# --- calls ----------------------------------------------------------------------------------------

def infer_payload(credential: str, **overrides: Any) -> dict[str, Any]:
    """What the OctoPrint plugin sends (plus the Klipper client's ticket_id)."""
    payload: dict[str, Any] = {
        "api_key": credential, "printer_id": PRINTER, "state": 0, "version": "1.3.01", "image_array": SPAGHETTI,
        "conf": 0.6, "buffer_length": 1, "buffer_percent": 60, "thresholds": [0.30, 0.60], "scores": [],
        "printTime": 500, "ticket_id": "t1",
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not ...}


async def post(
    client: httpx.AsyncClient, path: str, body: Any = None, *, content: bytes | None = None
) -> dict[str, Any]:
    response = await (client.post(path, content=content) if content is not None else client.post(path, json=body))
    assert response.status_code == 200, response.text  # every PrintWatch answer is HTTP 200
    answer: dict[str, Any] = response.json()
    assert "detail" not in answer  # the SDK reads a `detail` key as a failure of its own
    return answer


async def infer(client: httpx.AsyncClient, credential: str, **overrides: Any) -> dict[str, Any]:
    return await post(client, "/api/v2/infer", infer_payload(credential, **overrides))


async def register(client: httpx.AsyncClient, api_key: str, printer_id: str = PRINTER) -> None:
    answer = await infer(client, api_key, printer_id=printer_id)
    assert answer["statusCode"] == 214, answer


async def rewind(farm: Farm, printer_id: str = PRINTER) -> None:
    """Forget the device's last call, as if the minimum interval had passed."""
    async def work(session: Any) -> None:
        await session.execute(update(PrintWatchDevice).where(PrintWatchDevice.printer_id == printer_id)
                              .values(last_call_at=None))
        await session.commit()

    await farm.run(work)


async def issue(farm: Farm, member: Member, devices: int = 2) -> str:
    async def work(session: Any) -> str:
        user = await session.get(User, member.user.id)
        issued = await keys.issue_key(session, user, devices, "test")
        await session.commit()
        return issued.plain

    result: str = await farm.run(work)
    return result


@pytest.fixture
async def owner(farm: Farm) -> Member:
    return await farm.member()


@pytest.fixture
async def key(farm: Farm, owner: Member) -> str:
    return await issue(farm, owner)


async def device(farm: Farm, printer_id: str = PRINTER) -> PrintWatchDevice | None:
    async def work(session: Any) -> PrintWatchDevice | None:
        found = await session.execute(select(PrintWatchDevice).where(PrintWatchDevice.printer_id == printer_id))
        return found.scalar_one_or_none()

    found: PrintWatchDevice | None = await farm.run(work)
    return found


# --- 214, then 200 with real inference --------------------------------------------------------------

async def test_first_call_registers_the_printer_and_the_retry_scores_the_spaghetti(client, farm, key) -> None:
    answer = await infer(client, key)
    assert answer["statusCode"] == 214
    assert "message" in answer and "defect_detected" not in answer
    assert (await device(farm)) is not None

    answer = await infer(client, key)  # the registration call did not use up the interval
    assert answer["statusCode"] == 200, answer
    assert answer["defect_detected"] == "True"
    assert answer["score"] > 0.9
    assert answer["boxes"] and all(len(box) == 4 for box in answer["boxes"])
    assert answer["levels"] == [True, True]  # buffer_length 1: the one picture is the window
    assert len(answer["smas"]) == 1 and len(answer["smas"][0]) == 3
    assert answer["action"] == "pause"  # no heartbeat settings: pausing loses nothing
    assert answer["settings"] is None
    stored = await device(farm)
    assert stored is not None and stored.frames_scored == 1 and stored.client_version == "1.3.01"


async def test_a_clean_frame_shows_no_defect(client, farm, key) -> None:
    await register(client, key)
    answer = await infer(client, key, image_array=CLEAN)
    assert answer["statusCode"] == 200
    assert answer["defect_detected"] == "False"
    assert answer["score"] < 0.1
    assert answer["boxes"] == []
    assert answer["levels"] == [False, False]
    assert answer["action"] is None


@pytest.mark.parametrize(("fraction", "percent"), [(0.6, 60), (0.5, 50), (0.95, 95)])
async def test_conf_is_accepted_as_a_fraction_or_a_percentage(client, farm, key, fraction, percent) -> None:
    await register(client, key)
    as_fraction = await infer(client, key, conf=fraction)
    await rewind(farm)
    as_percent = await infer(client, key, conf=percent)
    assert as_fraction["statusCode"] == as_percent["statusCode"] == 200
    for field in ("defect_detected", "score", "boxes"):
        assert as_fraction[field] == as_percent[field]


async def test_boxes_are_those_at_the_client_confidence(client, farm, key) -> None:
    await register(client, key)
    low = await infer(client, key, conf=0.05)
    await rewind(farm)
    high = await infer(client, key, conf=0.6)
    assert len(low["boxes"]) > len(high["boxes"]) >= 1  # the shipped model adds faint boxes near the real one


async def test_levels_follow_the_smoothed_score_against_the_thresholds(client, farm, key) -> None:
    await register(client, key)
    # A window of 2: one bad picture makes the smoothed score about 0.5, two about 1.
    first = await infer(client, key, buffer_length=2, thresholds=[30, 60])
    assert first["levels"] == [True, False]
    assert first["smas"][0][0] == pytest.approx(first["score"] / 2, abs=1e-3)
    assert first["action"] is None
    await rewind(farm)
    second = await infer(client, key, buffer_length=2, thresholds=[0.3, 0.6], scores=[first["score"]])
    assert second["levels"] == [True, True]
    assert second["action"] == "pause"
    await rewind(farm)
    third = await infer(client, key, buffer_length=2, scores=[first["score"], second["score"]])
    assert third["levels"] == [True, True]
    assert third["action"] is None  # told once per print
    await rewind(farm)
    new_print = await infer(client, key, buffer_length=2, ticket_id="t2", scores=[0.5])
    assert new_print["levels"] == [True, False]  # a new ticket starts a new history


async def test_thresholds_above_the_score_reach_no_level(client, farm, key) -> None:
    await register(client, key)
    answer = await infer(client, key, image_array=CLEAN, thresholds=[0.0, 1.0])
    assert answer["levels"] == [True, False]  # 0 is always reached, 1 is never reached by a clean frame


@pytest.mark.parametrize(("client_settings", "action"), [
    ({"pause_print": True, "cancel_print": False}, "pause"),
    ({"pause_print": False, "cancel_print": True}, "cancel"),
    ({"pause_print": False, "cancel_print": False}, None),
])
async def test_the_action_follows_the_heartbeat_settings(client, farm, key, client_settings, action) -> None:
    heartbeat = await post(client, "/api/v2/heartbeat", {"api_key": key, "printer_id": PRINTER, "state": 2,
                                                         "settings": client_settings})
    assert heartbeat["statusCode"] == 214  # the first call of any kind registers the printer
    answer = await infer(client, key)
    assert answer["statusCode"] == 200 and answer["levels"] == [True, True]
    assert answer["action"] == action


async def test_boxes_are_in_a_640_space_for_a_1280x960_picture(app, client, farm, key) -> None:
    detector = await app.state.services.printwatch_inference.detector()
    # A drawn spaghetti whose boxes this model is sure of (the answer keeps boxes of 0.6 or more),
    # so that the test does not hang on one drawing when the shipped model changes.
    pictures = (jpeg(1.0, 1280, 960, seed=seed) for seed in range(8))
    scored = ((picture, [b for b in detector.detect_one(picture).boxes if b[4] >= 0.6]) for picture in pictures)
    picture, expected = next((picture, boxes) for picture, boxes in scored if boxes)
    await register(client, key)
    answer = await infer(client, key, image_array=b64(picture))
    assert answer["statusCode"] == 200 and answer["boxes"]
    assert len(expected) == len(answer["boxes"])
    for (xc, yc, w, h, _), box in zip(expected, answer["boxes"], strict=True):
        # Each axis on its own: the clients divide by 640 and multiply by the picture's width and height.
        assert box == pytest.approx([xc / 2, yc * 640 / 960, w / 2, h * 640 / 960], abs=0.06)
        assert 0 <= box[0] <= 640 and 0 <= box[1] <= 640


# --- 212 ------------------------------------------------------------------------------------------

async def test_a_device_beyond_the_plan_is_refused_until_one_is_released(client, farm, owner) -> None:
    key = await issue(farm, owner, devices=1)
    await register(client, key)
    answer = await infer(client, key, printer_id=OTHER_PRINTER)
    assert answer["statusCode"] == 212
    assert "plan" in answer["message"]
    assert await device(farm, OTHER_PRINTER) is None  # not registered beyond the plan

    [listed] = (await client.get("/api/v1/printwatch/keys/", headers=owner.headers)).json()
    [registered] = listed["devices"]
    released = await client.delete(f"/api/v1/printwatch/keys/{listed['id']}/devices/{registered['id']}/",
                                   headers=owner.headers)
    assert released.status_code == 204
    assert (await infer(client, key, printer_id=OTHER_PRINTER))["statusCode"] == 214


async def test_a_lowered_plan_serves_only_the_first_devices(client, farm, owner) -> None:
    key = await issue(farm, owner, devices=2)
    await register(client, key)
    await register(client, key, OTHER_PRINTER)
    [listed] = (await client.get("/api/v1/printwatch/keys/", headers=owner.headers)).json()
    changed = await client.patch(f"/api/v1/printwatch/keys/{listed['id']}/", json={"device_limit": 1},
                                 headers=owner.headers)
    assert changed.status_code == 200
    assert [d["within_plan"] for d in changed.json()["devices"]] == [True, False]
    assert (await infer(client, key))["statusCode"] == 200
    assert (await infer(client, key, printer_id=OTHER_PRINTER))["statusCode"] == 212


async def test_a_printer_in_use_with_another_key_is_refused(client, farm, owner, key) -> None:
    await register(client, key)
    second_key = await issue(farm, owner)
    stranger = await issue(farm, await farm.member(organization="Farm B"))
    for other in (second_key, stranger):
        answer = await infer(client, other)
        assert answer["statusCode"] == 212
        assert "another API key" in answer["message"]
    for path in ("/api/v2/heartbeat", "/api/v2/notify", "/feedback"):
        assert (await post(client, path, {"api_key": second_key, "printer_id": PRINTER}))["statusCode"] == 212


async def test_calls_more_often_than_every_5_seconds_are_refused(client, farm, key) -> None:
    await register(client, key)
    assert (await infer(client, key))["statusCode"] == 200
    too_soon = await infer(client, key)
    assert too_soon["statusCode"] == 212
    assert "too frequent" in too_soon["message"]
    await rewind(farm)
    assert (await infer(client, key))["statusCode"] == 200


# --- 213, 216, 218 ----------------------------------------------------------------------------------

async def test_print_time_under_five_minutes_is_too_soon(client, farm, key) -> None:
    await register(client, key)
    assert (await infer(client, key, printTime=299))["statusCode"] == 213
    await rewind(farm)
    assert (await infer(client, key, printTime=0))["statusCode"] == 213
    await rewind(farm)
    assert (await infer(client, key, printTime=300))["statusCode"] == 200


@pytest.mark.parametrize("print_time", [..., None, -1, "soon"])
async def test_an_unknown_print_time_is_unavailable(client, farm, key, print_time) -> None:
    await register(client, key)
    assert (await infer(client, key, printTime=print_time))["statusCode"] == 218


@pytest.mark.parametrize("state", [1, 2, 500])
async def test_a_printer_not_printing_meets_no_inference_criteria(client, farm, key, state) -> None:
    await register(client, key)
    # Not printing comes before the print time: a paused printer's time does not matter.
    assert (await infer(client, key, state=state, printTime=None))["statusCode"] == 216


# --- 217 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("api_key", [..., None, "", 42, "pw_unknown-key", "x" * 500])
async def test_a_missing_or_unknown_key_is_invalid(client, farm, key, api_key) -> None:
    answer = await post(client, "/api/v2/infer", infer_payload(key, api_key=api_key))
    assert answer["statusCode"] == 217


async def test_a_revoked_key_is_invalid_and_frees_its_printers(client, farm, owner, key) -> None:
    await register(client, key)
    [listed] = (await client.get("/api/v1/printwatch/keys/", headers=owner.headers)).json()
    assert (await client.delete(f"/api/v1/printwatch/keys/{listed['id']}/", headers=owner.headers)).status_code == 204
    for path in ("/api/v2/infer", "/api/v2/heartbeat", "/api/v2/notify", "/feedback"):
        assert (await post(client, path, infer_payload(key)))["statusCode"] == 217
    replacement = await issue(farm, owner)
    assert (await infer(client, replacement))["statusCode"] == 214


async def test_the_key_of_a_deactivated_member_is_invalid(client, farm, owner, key) -> None:
    async def deactivate(session: Any) -> None:
        user = await session.get(User, owner.user.id)
        user.is_active = False
        await session.commit()

    await farm.run(deactivate)
    assert (await infer(client, key))["statusCode"] == 217


# --- 215 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"", b'"text"', b"{" * 100_000])
async def test_a_body_that_is_not_a_json_object_is_bad_payload(client, body) -> None:
    answer = await post(client, "/api/v2/infer", content=body)
    assert answer["statusCode"] == 215


@pytest.mark.parametrize("overrides", [
    {"conf": ...}, {"conf": None}, {"conf": "high"}, {"conf": True}, {"conf": 150}, {"conf": -0.1},
    {"printer_id": ...}, {"printer_id": ""}, {"printer_id": 7}, {"printer_id": "p" * 65},
    {"image_array": ...}, {"state": ...}, {"state": "printing"}, {"state": 0.5},
    {"thresholds": [0.3]}, {"thresholds": "0.3,0.6"}, {"thresholds": [0.3, "high"]},
    {"buffer_length": 0}, {"buffer_length": 1.5}, {"buffer_percent": 101}, {"scores": "none"},
    {"ticket_id": 5},
])
async def test_missing_or_invalid_fields_are_bad_payload(client, farm, key, overrides) -> None:
    await register(client, key)
    answer = await infer(client, key, **overrides)
    assert answer["statusCode"] == 215, answer


async def test_nulls_for_optional_fields_mean_the_defaults(client, farm, key) -> None:
    await register(client, key)
    answer = await infer(client, key, buffer_length=None, buffer_percent=None, thresholds=None, scores=None,
                         ticket_id=None, version=None, conf=60)
    assert answer["statusCode"] == 200
    # The default window of 16 pictures: one bad picture is 1/16 of the way.
    assert answer["smas"][0][0] == pytest.approx(answer["score"] / 16, abs=1e-3)
    assert answer["levels"] == [False, False]


# --- 210 and 211 ----------------------------------------------------------------------------------

BAD_IMAGES = {
    "not base64": "%%% this is not base64 %%%",
    "base64 of text": b64(b"hello, I am not a picture at all"),
    "truncated JPEG": b64(jpeg(1.0)[: len(jpeg(1.0)) // 2]),
    "JPEG header only": b64(jpeg(1.0)[:200]),
    "huge dimensions": b64(png_claiming(30_000, 30_000)),
    "too wide": b64(png_claiming(9000, 10)),
    "empty": "",
    "a number": 12345,
    "a list": [1, 2, 3],
    "a GIF": b64(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
    "data URL without base64": "data:image/jpeg,abc",
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
async def test_bad_images_are_210_never_500(client, farm, key, name) -> None:
    await register(client, key)
    answer = await infer(client, key, image_array=BAD_IMAGES[name])
    assert answer["statusCode"] == 210, answer
    assert answer["message"].startswith("Issue with image data")


async def test_a_data_url_and_a_png_are_read(client, farm, key) -> None:
    await register(client, key)
    assert (await infer(client, key, image_array="data:image/jpeg;base64," + SPAGHETTI))["statusCode"] == 200
    await rewind(farm)
    frame, _ = render_frame(Scene.random(random.Random(0)), 0.5, spaghetti=1.0)
    out = io.BytesIO()
    frame.save(out, format="PNG")
    answer = await infer(client, key, image_array=b64(out.getvalue()))
    assert answer["statusCode"] == 200 and answer["defect_detected"] == "True"


async def test_a_body_over_the_limit_is_bad_image_data(client, farm, key, monkeypatch) -> None:
    await register(client, key)
    monkeypatch.setattr(protocol, "MAX_BODY_BYTES", 10_000)
    assert (await infer(client, key))["statusCode"] == 210
    assert (await post(client, "/api/v2/heartbeat", {"api_key": key, "printer_id": PRINTER,
                                                     "settings": {"email_address": "x" * 20_000}}))["statusCode"] == 215


async def test_a_detector_that_cannot_run_is_a_bad_inference_request(app, client, farm, key) -> None:
    def missing() -> Any:
        raise ModelMissing("no detection model at /nowhere.onnx")

    await register(client, key)
    # Swapped by hand: pytest's monkeypatch cannot restore an attribute of Starlette's State.
    shared = app.state.services.printwatch_inference
    app.state.services.printwatch_inference = PrintWatchInference(load=missing)
    try:
        answer = await infer(client, key)
    finally:
        app.state.services.printwatch_inference = shared
    assert answer["statusCode"] == 211
    assert "could not be loaded" in answer["message"]


async def test_an_unexpected_error_is_211_not_500(app, client, farm, key, monkeypatch) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(protocol.service, "heartbeat", broken)
    answer = await post(client, "/api/v2/heartbeat", {"api_key": key, "printer_id": PRINTER})
    assert answer["statusCode"] == 211 and "reference" in answer["message"]


# --- heartbeat, notify, feedback ------------------------------------------------------------------

async def test_heartbeat_keeps_the_settings_of_the_first_call(client, farm, key) -> None:
    settings = {"detection_threshold": 60, "buffer_length": 16, "notification_threshold": 30,
                "action_threshold": 60, "enable_notification": True, "email_address": "me@example.com",
                "pause_print": True, "cancel_print": False, "extruder_heat_off": False, "unknown": "dropped"}
    first = await post(client, "/api/v2/heartbeat", {"api_key": key, "printer_id": PRINTER, "state": 2,
                                                     "version": "1.2.1", "settings": settings})
    assert first["statusCode"] == 214
    again = await post(client, "/api/v2/heartbeat", {"api_key": key, "printer_id": PRINTER, "state": 2})
    assert again == {"statusCode": 200, "action": None, "settings": None}
    stored = await device(farm)
    assert stored is not None and stored.last_heartbeat_at is not None
    assert stored.settings == {k: v for k, v in settings.items() if k != "unknown"}
    assert (await infer(client, key))["statusCode"] == 200  # registered by the heartbeat: no 214 again
    bad = await post(client, "/api/v2/heartbeat", {"api_key": key, "printer_id": PRINTER, "settings": [1]})
    assert bad["statusCode"] == 215


async def test_notify_records_the_request_for_the_mailer(client, farm, owner, key) -> None:
    await register(client, key)
    klipper = {"api_key": key, "printer_id": PRINTER, "email_addr": "ops@example.com", "printTime": 900,
               "printTimeLeft": 100, "progress": 90, "job_name": "part.gcode", "notification": "action",
               "time": "11/22/2026 10:00:00"}
    assert (await post(client, "/api/v2/notify", klipper))["statusCode"] == 200
    # The OctoPrint plugin's notify call names neither level nor address: a warning, to the key holder.
    assert (await post(client, "/api/v2/notify", infer_payload(key)))["statusCode"] == 200
    assert (await post(client, "/api/v2/notify", {**klipper, "notification": "panic"}))["statusCode"] == 215
    assert (await post(client, "/api/v2/notify", {**klipper, "email_addr": "not an address"}))["statusCode"] == 215

    async def recorded(session: Any) -> list[PrintWatchNotification]:
        return list((await session.execute(select(PrintWatchNotification).order_by(PrintWatchNotification.id)))
                    .scalars())

    first, second = await farm.run(recorded)
    assert (first.level, first.email, first.delivered_at) == ("action", "ops@example.com", None)
    assert first.details == {"time": "11/22/2026 10:00:00", "printTime": 900, "printTimeLeft": 100,
                             "progress": 90, "job_name": "part.gcode"}
    assert (second.level, second.email) == ("warning", owner.user.email)


async def test_feedback_is_recorded_with_its_picture(client, farm, settings, key) -> None:
    await register(client, key)
    body = {**infer_payload(key), "feedback": {"feedback": True, "time": 1.0, "class": "spaghetti"}}
    assert (await post(client, "/feedback", body))["statusCode"] == 200
    no_image = {"api_key": key, "printer_id": PRINTER, "class": "false_positive", "enable_feedback_images": False,
                "image_array": SPAGHETTI}
    assert (await post(client, "/feedback", no_image))["statusCode"] == 200
    assert (await post(client, "/feedback", {**body, "image_array": BAD_IMAGES["truncated JPEG"]}))["statusCode"] == 210

    async def recorded(session: Any) -> list[PrintWatchFeedback]:
        return list((await session.execute(select(PrintWatchFeedback).order_by(PrintWatchFeedback.id))).scalars())

    with_picture, without = await farm.run(recorded)
    assert with_picture.classification == "spaghetti" and with_picture.image_path is not None
    assert (settings.data_dir / "media" / with_picture.image_path).read_bytes() == jpeg(1.0)
    assert without.classification == "false_positive" and without.image_path is None


async def test_paths_with_a_trailing_slash_answer_too(client, key) -> None:
    assert (await post(client, "/api/v2/infer/", infer_payload(key)))["statusCode"] == 214


# --- keys by REST ---------------------------------------------------------------------------------

async def test_admins_issue_keys_shown_once_and_viewers_only_read(client, farm) -> None:
    admin = await farm.member(Role.ADMIN)
    viewer = await farm.member(Role.VIEWER)
    operator = await farm.member(Role.OPERATOR)
    refused = await client.post("/api/v1/printwatch/keys/", json={"device_limit": 2}, headers=viewer.headers)
    assert refused.status_code == 403
    assert (await client.post("/api/v1/printwatch/keys/", json={"device_limit": 2},
                              headers=operator.headers)).status_code == 403

    created = await client.post("/api/v1/printwatch/keys/", json={"name": "farm\x00 A", "device_limit": 3},
                                headers=admin.headers)
    assert created.status_code == 201, created.text
    issued = created.json()
    assert issued["key"].startswith(issued["key_prefix"]) and issued["name"] == "farm A"
    assert (issued["device_limit"], issued["issued_to"], issued["devices"]) == (3, admin.user.email, [])
    assert (await infer(client, issued["key"]))["statusCode"] == 214

    listed = (await client.get("/api/v1/printwatch/keys/", headers=viewer.headers)).json()
    assert [k["id"] for k in listed] == [issued["id"]]
    assert "key" not in listed[0]  # shown once
    assert listed[0]["devices"][0]["printer_id"] == PRINTER
    detail = await client.get(f"/api/v1/printwatch/keys/{issued['id']}/", headers=viewer.headers)
    assert detail.status_code == 200
    for method, path in [("PATCH", ""), ("DELETE", ""), ("DELETE", f"devices/{listed[0]['devices'][0]['id']}/")]:
        response = await client.request(method, f"/api/v1/printwatch/keys/{issued['id']}/{path}",
                                        json={"name": "x"} if method == "PATCH" else None, headers=operator.headers)
        assert response.status_code == 403

    for invalid in ({"device_limit": 0}, {"device_limit": 1001}, {"device_limit": "2"}, {}, {"device_limit": True}):
        response = await client.post("/api/v1/printwatch/keys/", json=invalid, headers=admin.headers)
        assert response.status_code == 400, invalid


async def test_another_organizations_keys_are_not_found(client, farm, owner, key) -> None:
    stranger = await farm.member(Role.OWNER, organization="Farm B")
    [mine] = (await client.get("/api/v1/printwatch/keys/", headers=owner.headers)).json()
    assert (await client.get("/api/v1/printwatch/keys/", headers=stranger.headers)).json() == []
    base = f"/api/v1/printwatch/keys/{mine['id']}/"
    assert (await client.get(base, headers=stranger.headers)).status_code == 404
    assert (await client.patch(base, json={"device_limit": 5}, headers=stranger.headers)).status_code == 404
    assert (await client.delete(base, headers=stranger.headers)).status_code == 404
    assert (await client.delete(base + "devices/1/", headers=stranger.headers)).status_code == 404
    assert (await client.get("/api/v1/printwatch/keys/99999/", headers=owner.headers)).status_code == 404
    assert (await infer(client, key))["statusCode"] == 214  # untouched


async def test_a_revoked_key_cannot_be_changed(client, farm, owner, key) -> None:
    [mine] = (await client.get("/api/v1/printwatch/keys/", headers=owner.headers)).json()
    base = f"/api/v1/printwatch/keys/{mine['id']}/"
    assert (await client.delete(base, headers=owner.headers)).status_code == 204
    assert (await client.delete(base, headers=owner.headers)).status_code == 204  # revoking again changes nothing
    assert (await client.patch(base, json={"device_limit": 5}, headers=owner.headers)).status_code == 409
    assert (await client.get(base, headers=owner.headers)).json()["revoked_at"] is not None


async def test_only_the_hash_of_a_key_is_stored(farm, owner, key) -> None:
    async def stored(session: Any) -> PrintWatchKey:
        return (await session.execute(select(PrintWatchKey))).scalar_one()

    row = await farm.run(stored)
    assert row.key_hash == keys.hash_key(key) and key not in (row.key_hash, row.key_prefix)


# --- keys by the command line ---------------------------------------------------------------------

def layerfleet(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LAYERFLEET_DATA_DIR": str(data_dir)}
    env.pop("LAYERFLEET_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "layerfleet", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_command_line_prints_a_key_for_n_devices(tmp_path: Path) -> None:
    created = layerfleet(tmp_path, "createuser", "farmer@example.com", "--password", "x12345678")
    assert created.returncode == 0, created.stderr
    issued = layerfleet(tmp_path, "printwatch-key", "create", "farmer@example.com", "--devices", "2")
    assert issued.returncode == 0, issued.stderr
    plain = issued.stdout.strip()
    assert plain.startswith(keys.KEY_PREFIX) and len(plain) > 30

    missing = layerfleet(tmp_path, "printwatch-key", "create", "nobody@example.com", "--devices", "2")
    assert missing.returncode == 1 and "no user" in missing.stderr
    refused = layerfleet(tmp_path, "printwatch-key", "create", "farmer@example.com", "--devices", "0")
    assert refused.returncode == 1 and "device limit" in refused.stderr

    import asyncio

    async def stored() -> tuple[int, str]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'layerfleet.db'}", pooled=False)
        try:
            async with create_sessionmaker(engine)() as session:
                row = (await session.execute(select(PrintWatchKey))).scalar_one()
                return row.device_limit, row.key_hash
        finally:
            await engine.dispose()

    assert asyncio.run(stored()) == (2, keys.hash_key(plain))
