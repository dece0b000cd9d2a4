"""The PrintWatch inference API dialect (seed 000, `shared/protocols/printwatch.md`): what the
OctoPrint plugin and the Klipper client call, translated onto `layerfleet.printwatch`.

Every answer is HTTP 200 with a JSON body whose ``statusCode`` is 200 or one of the custom codes;
a refusal also carries ``message`` (never ``detail``, which the SDK reads as a failure of its own).
A scored picture answers ``defect_detected`` (the string "True" or "False": the OctoPrint plugin
``eval``s it), ``score``, ``boxes`` ``[cx, cy, w, h]`` in a 640 × 640 space (each axis scaled on its
own: the clients divide by 640 and multiply by the picture's width and height), ``levels``
``[notify, action]``, ``smas`` ``[[short, ewma, long]]`` (see `layerfleet.printwatch.scoring`),
``action`` (``"pause"``, ``"cancel"`` or null) and ``settings``. ``settings`` is always null: the
clients overwrite their own settings with any they are sent (and the OctoPrint plugin saves them,
which restarts its services), and this server has none of its own to push yet. Beyond the seed,
``defect_score`` and ``defect_boxes`` (same space as ``boxes``) report print-quality defects
(warping, stringing, extrusion, surface): ``defect_detected`` keeps the seed's meaning (a failure).

==== ========================= =====================================================================
code seed's message            answered when
==== ========================= =====================================================================
200  –                         infer: the picture was scored; heartbeat, notify, feedback: recorded
210  Issue with Image data     infer, feedback: ``image_array`` is not a string, not base64, not a
                               JPEG or PNG, or does not decode (truncated, damaged, over 10 MB, over
                               8192 px a side or 40 megapixels); the body is over 16 MB
211  Bad inference request     infer: the detector could not run (no model, runtime error); any
                               endpoint: an unexpected server error (logged with a reference)
212  Settings check failed     the ``printer_id`` is registered with another key; a new
                               ``printer_id`` while all the key's devices are in use (a device beyond
                               the plan); a device registered before the plan was lowered, beyond the
                               new limit; infer: under 5 s since the device's last infer call that
                               was let through ("calls too frequent")
213  Print time too soon       infer, printing: ``printTime`` < 300 s
214  New user added            the first call (any endpoint) naming a ``printer_id`` the server does
                               not know: it is registered with the key and nothing else is done
                               (except that a heartbeat's settings are kept: clients send them only
                               once); the same call again gets 200
215  Issue with payload data   the body is not a JSON object (heartbeat, notify: or is over 16 MB);
                               ``printer_id`` missing, empty, not a string or over 64 characters;
                               infer: ``state``, ``image_array`` or ``conf`` missing, or ``conf``,
                               ``thresholds``, ``buffer_length``, ``buffer_percent``, ``scores``,
                               ``ticket_id`` of the wrong type or out of range; heartbeat:
                               ``settings`` not an object; notify: ``notification`` not "warning" or
                               "action", ``email_addr`` not an address; feedback:
                               ``enable_feedback_images`` not a boolean
216  No inference criteria met infer: ``state`` is not 0 (printing): paused, idle or unknown
217  Invalid API key           ``api_key`` missing, not a string, unknown, revoked, or its member
                               deactivated
218  Unavailable print time    infer, printing: ``printTime`` absent, null, negative or not a number
==== ========================= =====================================================================

The checks run in the order of `layerfleet.printwatch.service`: key, payload, device, interval,
state, print time, picture, detector; the first that fails answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from layerfleet.api.deps import AppSettings, Db, Inference
from layerfleet.database import utcnow
from layerfleet.errors import Invalid
from layerfleet.printwatch import service
from layerfleet.printwatch.codes import Refusal, StatusCode
from layerfleet.printwatch.payloads import Payload

log = logging.getLogger(__name__)

router = APIRouter(tags=["PrintWatch API"])

MAX_BODY_BYTES = 16 * 1024 * 1024
BOX_SPACE = 640  # the clients' picture space for boxes
# Parsing a body this large takes milliseconds: done in a worker thread, not on the event loop.
PARSE_IN_THREAD_BYTES = 256 * 1024


def _answer(code: StatusCode, **fields: Any) -> JSONResponse:
    return JSONResponse({"statusCode": int(code), **fields}, status_code=200)


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is larger than `MAX_BODY_BYTES` (read no further than that)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _payload(request: Request, too_large: StatusCode) -> Payload:
    body = await _read_body(request)
    if body is None:
        raise Refusal(too_large, f"the request is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
    try:
        parsed = await asyncio.to_thread(json.loads, body) if len(body) > PARSE_IN_THREAD_BYTES else json.loads(body)
    except (ValueError, RecursionError):
        raise Refusal(StatusCode.BAD_PAYLOAD, "the body is not JSON") from None
    if not isinstance(parsed, dict):
        raise Refusal(StatusCode.BAD_PAYLOAD, "the body must be a JSON object")
    return parsed


async def _serve(work: Callable[[], Awaitable[dict[str, Any]]]) -> JSONResponse:
    try:
        fields = await work()
    except Refusal as refusal:
        return _answer(refusal.code, message=f"{refusal.code.title}: {refusal.reason}")
    except Invalid as invalid:  # the rest of the error family: a value no record may hold (NUL, …)
        return _answer(StatusCode.BAD_PAYLOAD, message=f"{StatusCode.BAD_PAYLOAD.title}: {invalid}")
    except Exception:
        # The clients read only the body: a JSON 211 lets them back off as for any failure.
        reference = uuid.uuid4().hex[:12]
        log.exception("PrintWatch call failed (reference %s)", reference)
        return _answer(StatusCode.INFERENCE_FAILED,
                       message=f"{StatusCode.INFERENCE_FAILED.title}: server error (reference {reference})")
    return _answer(StatusCode.OK, **fields)


def _infer_fields(result: service.InferResult) -> dict[str, Any]:
    scale_x = BOX_SPACE / result.width if result.width else 0.0
    scale_y = BOX_SPACE / result.height if result.height else 0.0

    def scaled(found: list[service.Box]) -> list[list[float]]:
        return [[round(box.xc * scale_x, 1), round(box.yc * scale_y, 1), round(box.w * scale_x, 1),
                 round(box.h * scale_y, 1)] for box in found]

    boxes = scaled(result.boxes)
    smoothed = result.smoothed
    return {
        "defect_detected": "True" if result.defect_detected else "False",
        "score": round(result.score, 4),
        "boxes": boxes,
        "levels": list(result.levels),
        "smas": [[round(smoothed.short, 4), round(smoothed.ewma, 4), round(smoothed.long, 4)]],
        "action": result.action.value if result.action is not None else None,
        "settings": None,
        # Ours, beside the seed's fields (clients ignore keys they do not know): print-quality
        # defects, one class "defect"; null / [] when the model has no defect output.
        "defect_score": None if result.defect_score is None else round(result.defect_score, 4),
        "defect_boxes": scaled(result.defect_boxes),
    }


_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}},
    }
}
_ANSWER_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Always HTTP 200: `statusCode` in the body is 200 or a custom code 210–218",
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["statusCode"], "additionalProperties": True,
            "properties": {"statusCode": {"type": "integer"}, "message": {"type": "string"}},
        }}},
    }
}


def _route(path: str, summary: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        router.post(path, summary=summary, responses=_ANSWER_DOC, openapi_extra=_BODY_DOC,
                    response_class=JSONResponse)(endpoint)
        # Posted to exactly, a trailing slash would otherwise be a redirect the clients may not follow.
        router.post(path + "/", include_in_schema=False)(endpoint)
        return endpoint

    return register


@_route("/api/v2/infer", "Score one webcam picture")
async def infer(request: Request, db: Db, inference: Inference) -> JSONResponse:
    async def work() -> dict[str, Any]:
        payload = await _payload(request, too_large=StatusCode.BAD_IMAGE)
        return _infer_fields(await service.infer(db, inference, payload, utcnow()))

    return await _serve(work)


@_route("/api/v2/heartbeat", "Tell the service the client is alive (its settings on the first call)")
async def heartbeat(request: Request, db: Db) -> JSONResponse:
    async def work() -> dict[str, Any]:
        await service.heartbeat(db, await _payload(request, too_large=StatusCode.BAD_PAYLOAD), utcnow())
        return {"action": None, "settings": None}

    return await _serve(work)


@_route("/api/v2/notify", "Ask for an email notification (recorded; there is no mailer yet)")
async def notify(request: Request, db: Db) -> JSONResponse:
    async def work() -> dict[str, Any]:
        await service.notify(db, await _payload(request, too_large=StatusCode.BAD_PAYLOAD), utcnow())
        return {"message": "notification recorded"}

    return await _serve(work)


@_route("/feedback", "Send feedback on a detection (was it a real failure?)")
async def feedback(request: Request, db: Db, settings: AppSettings) -> JSONResponse:
    async def work() -> dict[str, Any]:
        payload = await _payload(request, too_large=StatusCode.BAD_IMAGE)
        await service.feedback(db, payload, utcnow(), data_dir=settings.data_dir)
        return {"message": "feedback recorded"}

    return await _serve(work)
