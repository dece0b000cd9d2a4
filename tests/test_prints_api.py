"""Print API (seed 002) and the Print / PrintShotFeedback objects (seed 001) on every database backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select

from conftest import PRINTING, Farm, Member, now
from layerfleet.accounts.models import Role
from layerfleet.fleet.models import Printer
from layerfleet.prints.models import Print, PrintShotFeedback

PRINT_FIELDS = {
    "id", "printer", "filename", "started_at", "finished_at", "cancelled_at", "uploaded_at", "alerted_at",
    "alert_acknowledged_at", "alert_muted_at", "paused_at", "video_url", "tagged_video_url", "poster_url",
    "prediction_json_url", "alert_overwrite", "printshotfeedback_set",
}
FEEDBACK_FIELDS = {"id", "print_id", "image_url", "answer", "answered_at"}

# Both spellings of the single-print path in seed 002.
SINGLE_PATHS = ["/api/v1/prints/{id}/", "/api/v1/print/{id}/"]


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def ids(client, member: Member, query: str = "") -> list[int]:
    response = await client.get(f"/api/v1/prints/{query}", headers=member.headers)
    assert response.status_code == 200, response.text
    return [p["id"] for p in response.json()]


async def get_print(client, member: Member, print_id: int) -> dict[str, Any]:
    response = await client.get(f"/api/v1/prints/{print_id}/", headers=member.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def feedback_ids(client, member: Member, print_id: int) -> list[int]:
    return [f["id"] for f in (await get_print(client, member, print_id))["printshotfeedback_set"]]


async def answer_in_db(farm: Farm, feedback_id: int, answer: str = "LOOKS_OK") -> None:
    async def work(session) -> None:
        feedback = await session.get(PrintShotFeedback, feedback_id)
        feedback.answer = answer
        feedback.answered_at = now()
        await session.commit()

    await farm.run(work)


# --- the objects -------------------------------------------------------------------------------


async def test_print_object_has_every_field_of_seed_001(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    org = printer.organization_id
    started = now() - timedelta(hours=3)
    print_ = await farm.print(
        printer, feedback=2, filename="benchy.gcode", started_at=started,
        finished_at=started + timedelta(hours=2), uploaded_at=started + timedelta(hours=2, minutes=5),
        alerted_at=started + timedelta(minutes=30), alert_acknowledged_at=started + timedelta(minutes=31),
        alert_muted_at=started + timedelta(minutes=32), paused_at=started + timedelta(minutes=30),
        video_path=f"orgs/{org}/v.mp4", tagged_video_path=f"orgs/{org}/t.mp4",
        poster_path=f"orgs/{org}/p.jpg", prediction_json_path=f"orgs/{org}/p.json",
        alert_overwrite="FAILED",
    )
    response = await client.get("/api/v1/prints/", headers=owner.headers)
    assert response.status_code == 200
    [body] = response.json()
    assert set(body) >= PRINT_FIELDS
    assert body["id"] == print_.id
    assert body["printer"] == printer.id
    assert body["filename"] == "benchy.gcode"
    assert body["alert_overwrite"] == "FAILED"
    assert body["cancelled_at"] is None
    for name, offset in [
        ("started_at", timedelta()), ("finished_at", timedelta(hours=2)),
        ("uploaded_at", timedelta(hours=2, minutes=5)), ("alerted_at", timedelta(minutes=30)),
        ("alert_acknowledged_at", timedelta(minutes=31)), ("alert_muted_at", timedelta(minutes=32)),
        ("paused_at", timedelta(minutes=30)),
    ]:
        assert abs(parse_ts(body[name]) - (started + offset)) < timedelta(milliseconds=1), name
        assert parse_ts(body[name]).utcoffset() == timedelta(0), name
    assert body["video_url"] == f"http://testserver/media/orgs/{org}/v.mp4"
    assert body["tagged_video_url"] == f"http://testserver/media/orgs/{org}/t.mp4"
    assert body["poster_url"] == f"http://testserver/media/orgs/{org}/p.jpg"
    assert body["prediction_json_url"] == f"http://testserver/media/orgs/{org}/p.json"

    feedbacks = body["printshotfeedback_set"]
    assert len(feedbacks) == 2
    assert feedbacks[0]["id"] < feedbacks[1]["id"]
    for n, feedback in enumerate(feedbacks):
        assert set(feedback) >= FEEDBACK_FIELDS
        assert feedback["print_id"] == print_.id
        assert feedback["image_url"] == f"http://testserver/media/orgs/{org}/f{n}.jpg"
        assert feedback["answer"] == "UNANSWERED"
        assert feedback["answered_at"] is None

    # The same object on both single-print paths.
    for path in SINGLE_PATHS:
        single = await client.get(path.format(id=print_.id), headers=owner.headers)
        assert single.status_code == 200
        assert single.json() == body


async def test_print_without_media_has_null_urls_and_no_feedback(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer)
    body = await get_print(client, owner, print_.id)
    assert set(body) >= PRINT_FIELDS
    for name in ("video_url", "tagged_video_url", "poster_url", "prediction_json_url", "finished_at",
                 "cancelled_at", "uploaded_at", "alerted_at", "alert_acknowledged_at", "alert_muted_at",
                 "paused_at", "alert_overwrite"):
        assert body[name] is None, name
    assert body["printshotfeedback_set"] == []
    assert body["started_at"] is not None


# --- listing: filters ----------------------------------------------------------------------------


async def test_filters(client, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    printer = await farm.printer(owner)
    t = now() - timedelta(days=1)
    finished = await farm.print(printer, finished_at=t)
    cancelled = await farm.print(printer, cancelled_at=t, alert_overwrite="FAILED")
    running = await farm.print(printer, alert_overwrite="NOT_FAILED")
    fb_unanswered = await farm.print(printer, feedback=2, finished_at=t, alert_overwrite="NOT_FAILED")
    fb_partly = await farm.print(printer, feedback=2, cancelled_at=t, alert_overwrite="FAILED")
    fb_all = await farm.print(printer, feedback=1, finished_at=t)
    await answer_in_db(farm, (await feedback_ids(client, owner, fb_partly.id))[0])
    await answer_in_db(farm, (await feedback_ids(client, owner, fb_all.id))[0], "LOOKS_BAD")

    # Another organization's prints match every filter and must never show up.
    other = await farm.member(organization="B")
    other_printer = await farm.printer(other)
    await farm.print(other_printer, feedback=1, finished_at=t, cancelled_at=t)

    everything = {finished.id, cancelled.id, running.id, fb_unanswered.id, fb_partly.id, fb_all.id}
    assert set(await ids(client, owner)) == everything
    assert len(await ids(client, owner)) == len(everything)
    assert set(await ids(client, owner, "?filter=cancelled")) == {cancelled.id, fb_partly.id}
    assert set(await ids(client, owner, "?filter=finished")) == {finished.id, fb_unanswered.id, fb_all.id}
    assert set(await ids(client, owner, "?filter=need_alert_overwrite")) == {finished.id, fb_all.id}
    # Seed 002: prints that have feedback objects, none of which has an answer.
    assert await ids(client, owner, "?filter=need_print_shot_feedback") == [fb_unanswered.id]


async def test_answering_feedback_removes_the_print_from_need_print_shot_feedback(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=3, finished_at=now())
    assert await ids(client, owner, "?filter=need_print_shot_feedback") == [print_.id]
    first = (await feedback_ids(client, owner, print_.id))[0]
    response = await client.patch(f"/api/v1/prints/{print_.id}/", headers=owner.headers,
                                  json={"printshotfeedback_set": [{"id": first, "answer": "LOOKS_OK"}]})
    assert response.status_code == 200
    assert await ids(client, owner, "?filter=need_print_shot_feedback") == []


async def test_alert_overwrite_removes_the_print_from_need_alert_overwrite(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, finished_at=now())
    assert await ids(client, owner, "?filter=need_alert_overwrite") == [print_.id]
    url = f"/api/v1/prints/{print_.id}/"
    await client.patch(url, headers=owner.headers, json={"alert_overwrite": "NOT_FAILED"})
    assert await ids(client, owner, "?filter=need_alert_overwrite") == []
    await client.patch(url, headers=owner.headers, json={"alert_overwrite": None})
    assert await ids(client, owner, "?filter=need_alert_overwrite") == [print_.id]


# --- listing: sorting and pagination -------------------------------------------------------------


async def test_sorting_by_start_time(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    base = now().replace(microsecond=0) - timedelta(days=2)
    # Created in an order unlike either sorting, so an ordering by id cannot pass for one.
    oldest = await farm.print(printer, started_at=base)
    newest = await farm.print(printer, started_at=base + timedelta(hours=5))
    # Given in UTC+05:00: 10:00:00.5 there is 05:00:00.5 UTC, earlier than `newest` despite the wall time.
    plus_five = timezone(timedelta(hours=5))
    middle = await farm.print(
        printer, started_at=(base + timedelta(hours=2, microseconds=500_000)).astimezone(plus_five)
    )
    assert await ids(client, owner, "?sorting=date_desc") == [newest.id, middle.id, oldest.id]
    assert await ids(client, owner, "?sorting=date_asc") == [oldest.id, middle.id, newest.id]
    listed = (await client.get("/api/v1/prints/?sorting=date_asc", headers=owner.headers)).json()
    started = [parse_ts(p["started_at"]) for p in listed]
    assert started == sorted(started)


async def test_pagination(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    base = now() - timedelta(days=1)
    created = [await farm.print(printer, started_at=base + timedelta(minutes=n))
               for n in (30, 10, 50, 20, 40)]
    by_start = [p.id for p in sorted(created, key=lambda p: p.started_at)]  # minutes 10, 20, 30, 40, 50

    assert await ids(client, owner, "?sorting=date_asc&start=1&limit=2") == by_start[1:3]
    assert await ids(client, owner, "?sorting=date_desc&start=1&limit=2") == by_start[::-1][1:3]
    assert await ids(client, owner, "?sorting=date_asc&limit=3") == by_start[:3]
    assert await ids(client, owner, "?sorting=date_asc&start=3") == by_start[3:]
    assert await ids(client, owner, "?sorting=date_asc&start=4&limit=10") == by_start[4:]
    assert await ids(client, owner, "?sorting=date_asc&start=5&limit=2") == []
    assert await ids(client, owner, "?sorting=date_asc&start=0&limit=5") == by_start


async def test_pagination_with_equal_start_times_covers_every_print_once(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    same = now() - timedelta(hours=1)
    created = {(await farm.print(printer, started_at=same)).id for _ in range(5)}
    for sorting in ("date_asc", "date_desc"):
        pages = [await ids(client, owner, f"?sorting={sorting}&start={s}&limit=2") for s in (0, 2, 4)]
        seen = [i for page in pages for i in page]
        assert sorted(seen) == sorted(created), sorting


async def test_pagination_combines_with_a_filter(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    base = now() - timedelta(days=1)
    finished = [await farm.print(printer, started_at=base + timedelta(hours=n), finished_at=now())
                for n in range(4)]
    await farm.print(printer, started_at=base + timedelta(minutes=30), cancelled_at=base + timedelta(hours=1))
    assert await ids(client, owner, "?filter=finished&sorting=date_desc&start=1&limit=2") == [
        finished[2].id, finished[1].id
    ]


@pytest.mark.parametrize(
    ("query", "bad_fields"),
    [
        ("?start=1", {"start"}),
        ("?limit=2", {"limit"}),
        ("?start=0", {"start"}),
        ("?start=1&limit=2", {"start", "limit"}),
        ("?filter=finished&limit=2", {"limit"}),
    ],
)
async def test_start_or_limit_without_sorting_is_400_per_field(client, farm: Farm, query, bad_fields) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    await farm.print(printer, finished_at=now())
    response = await client.get(f"/api/v1/prints/{query}", headers=owner.headers)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == bad_fields
    for field in bad_fields:
        assert isinstance(body[field], list) and body[field]
        assert all("sorting" in message for message in body[field])


@pytest.mark.parametrize(
    ("query", "bad_field"),
    [
        ("?filter=running", "filter"),
        ("?filter=CANCELLED", "filter"),
        ("?filter=", "filter"),
        ("?sorting=name", "sorting"),
        ("?sorting=date", "sorting"),
        ("?sorting=date_asc&start=-1", "start"),
        ("?sorting=date_asc&start=abc", "start"),
        ("?sorting=date_asc&limit=-5", "limit"),
        ("?sorting=date_asc&limit=many", "limit"),
    ],
)
async def test_invalid_query_values_are_400(client, farm: Farm, query, bad_field) -> None:
    owner = await farm.member()
    response = await client.get(f"/api/v1/prints/{query}", headers=owner.headers)
    assert response.status_code == 400
    body = response.json()
    assert bad_field in body
    assert all(isinstance(m, str) for m in body[bad_field])


# --- single print: GET, errors ----------------------------------------------------------------------


@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_missing_print_is_404_json(client, farm: Farm, path: str) -> None:
    owner = await farm.member()
    for print_id in ("999999", "abc", "0", "-3"):
        response = await client.get(path.format(id=print_id), headers=owner.headers)
        assert response.status_code == 404, print_id
        assert response.json() == {"detail": "Not found."}


async def test_prediction_json(client, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, finished_at=now())
    response = await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=owner.headers)
    assert response.status_code == 200
    assert response.json() == []

    stranger = await farm.member(organization="B")
    response = await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=stranger.headers)
    assert response.status_code == 404
    missing = await client.get("/api/v1/prints/999999/prediction_json", headers=owner.headers)
    assert missing.status_code == 404
    anonymous = await client.get(f"/api/v1/prints/{print_.id}/prediction_json")
    assert anonymous.status_code == 401


# --- PATCH ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_patch_alert_overwrite(client, farm: Farm, path: str) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, finished_at=now())
    url = path.format(id=print_.id)
    for value in ("FAILED", "NOT_FAILED", None, "FAILED"):
        response = await client.patch(url, headers=owner.headers, json={"alert_overwrite": value})
        assert response.status_code == 200, response.text
        assert response.json()["alert_overwrite"] == value
        assert (await get_print(client, owner, print_.id))["alert_overwrite"] == value
    # Not given is not the same as null: the verdict stays.
    response = await client.patch(url, headers=owner.headers, json={})
    assert response.status_code == 200
    assert (await get_print(client, owner, print_.id))["alert_overwrite"] == "FAILED"
    # Answering feedback alone leaves the verdict alone too.
    response = await client.patch(url, headers=owner.headers, json={"printshotfeedback_set": []})
    assert response.status_code == 200
    assert response.json()["alert_overwrite"] == "FAILED"


@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_patch_feedback_answers(client, farm: Farm, path: str) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=3, finished_at=now())
    url = path.format(id=print_.id)
    first, second, third = await feedback_ids(client, owner, print_.id)
    before = now() - timedelta(seconds=1)
    response = await client.patch(url, headers=owner.headers, json={
        "printshotfeedback_set": [{"id": first, "answer": "LOOKS_BAD"}, {"id": third, "answer": "LOOKS_OK"}],
    })
    after = now() + timedelta(seconds=1)
    assert response.status_code == 200, response.text
    again = await get_print(client, owner, print_.id)
    for body in (response.json(), again):
        by_id = {f["id"]: f for f in body["printshotfeedback_set"]}
        assert by_id[first]["answer"] == "LOOKS_BAD"
        assert by_id[third]["answer"] == "LOOKS_OK"
        assert before <= parse_ts(by_id[first]["answered_at"]) <= after
        assert before <= parse_ts(by_id[third]["answered_at"]) <= after
        assert by_id[second]["answer"] == "UNANSWERED"
        assert by_id[second]["answered_at"] is None
        assert body["alert_overwrite"] is None

    # A later answer replaces the earlier one.
    response = await client.patch(url, headers=owner.headers,
                                  json={"printshotfeedback_set": [{"id": first, "answer": "LOOKS_OK"}]})
    assert response.status_code == 200
    by_id = {f["id"]: f for f in (await get_print(client, owner, print_.id))["printshotfeedback_set"]}
    assert by_id[first]["answer"] == "LOOKS_OK"
    assert by_id[third]["answer"] == "LOOKS_OK"


async def test_patch_verdict_and_answers_together(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=1, cancelled_at=now())
    [fid] = await feedback_ids(client, owner, print_.id)
    response = await client.patch(f"/api/v1/prints/{print_.id}/", headers=owner.headers, json={
        "alert_overwrite": "FAILED", "printshotfeedback_set": [{"id": fid, "answer": "LOOKS_BAD"}],
    })
    assert response.status_code == 200
    body = await get_print(client, owner, print_.id)
    assert body["alert_overwrite"] == "FAILED"
    assert body["printshotfeedback_set"][0]["answer"] == "LOOKS_BAD"
    assert body["printshotfeedback_set"][0]["answered_at"] is not None


async def test_patch_ignores_read_only_fields(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    other_printer = await farm.printer(owner, "other")
    org = printer.organization_id
    print_ = await farm.print(printer, feedback=1, filename="real.gcode", finished_at=now(),
                              video_path=f"orgs/{org}/v.mp4", alerted_at=now() - timedelta(minutes=5))
    before = await get_print(client, owner, print_.id)
    [feedback] = before["printshotfeedback_set"]
    read_only = {
        "id": 4242, "printer": other_printer.id, "filename": "renamed.gcode",
        "started_at": "2001-01-01T00:00:00Z", "finished_at": None, "cancelled_at": "2001-01-02T00:00:00Z",
        "uploaded_at": "2001-01-03T00:00:00Z", "alerted_at": None,
        "alert_acknowledged_at": "2001-01-04T00:00:00Z", "alert_muted_at": "2001-01-05T00:00:00Z",
        "paused_at": "2001-01-06T00:00:00Z", "video_url": "http://evil.example/v.mp4",
        "tagged_video_url": "http://evil.example/t.mp4", "poster_url": "http://evil.example/p.jpg",
        "prediction_json_url": "http://evil.example/p.json",
    }
    response = await client.patch(f"/api/v1/prints/{print_.id}/", headers=owner.headers, json=read_only)
    assert response.status_code == 200, response.text
    assert response.json() == before
    assert await get_print(client, owner, print_.id) == before

    # Alongside a writable field only that field changes; a feedback's own read-only fields stay too.
    response = await client.patch(f"/api/v1/prints/{print_.id}/", headers=owner.headers, json={
        **read_only, "alert_overwrite": "NOT_FAILED",
        "printshotfeedback_set": [{
            "id": feedback["id"], "answer": "LOOKS_OK", "print_id": 777,
            "image_url": "http://evil.example/x.jpg", "answered_at": "2001-01-01T00:00:00Z",
        }],
    })
    assert response.status_code == 200, response.text
    after = await get_print(client, owner, print_.id)
    assert after["alert_overwrite"] == "NOT_FAILED"
    [changed] = after["printshotfeedback_set"]
    assert changed["answer"] == "LOOKS_OK"
    assert changed["print_id"] == print_.id
    assert changed["image_url"] == feedback["image_url"]
    assert parse_ts(changed["answered_at"]) > now() - timedelta(minutes=1)
    writable = {"alert_overwrite", "printshotfeedback_set"}
    assert {k: v for k, v in after.items() if k not in writable} == {
        k: v for k, v in before.items() if k not in writable
    }
    assert after["printer"] == printer.id and after["filename"] == "real.gcode"


FeedbackBody = Callable[[int], Any]

INVALID_PATCHES: list[tuple[FeedbackBody, set[str]]] = [
    (lambda f: {"alert_overwrite": "MAYBE"}, {"alert_overwrite"}),
    (lambda f: {"alert_overwrite": "failed"}, {"alert_overwrite"}),
    (lambda f: {"alert_overwrite": 1}, {"alert_overwrite"}),
    (lambda f: {"alert_overwrite": ["FAILED"]}, {"alert_overwrite"}),
    (lambda f: {"printshotfeedback_set": "LOOKS_BAD"}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": None}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": {"id": f, "answer": "LOOKS_BAD"}}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": [{"id": f, "answer": "TERRIBLE"}]}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": [{"id": f}]}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": [{"answer": "LOOKS_BAD"}]}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": [{"id": None, "answer": "LOOKS_BAD"}]}, {"printshotfeedback_set"}),
    (lambda f: {"printshotfeedback_set": ["LOOKS_BAD"]}, {"printshotfeedback_set"}),
    # One bad field beside good ones: nothing at all is applied.
    (lambda f: {"alert_overwrite": "FAILED", "printshotfeedback_set": [{"id": f, "answer": "NOPE"}]},
     {"printshotfeedback_set"}),
    (lambda f: {"alert_overwrite": "WRONG", "printshotfeedback_set": [{"id": f, "answer": "LOOKS_OK"}]},
     {"alert_overwrite"}),
    (lambda f: {"alert_overwrite": "WRONG", "printshotfeedback_set": [{"id": f, "answer": "NOPE"}]},
     {"alert_overwrite", "printshotfeedback_set"}),
]


@pytest.mark.parametrize(("make_body", "bad_fields"), INVALID_PATCHES)
@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_invalid_patch_is_400_per_field_and_changes_nothing(
    client, farm: Farm, path: str, make_body: FeedbackBody, bad_fields: set[str]
) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=2, finished_at=now())
    before = await get_print(client, owner, print_.id)
    fid = before["printshotfeedback_set"][0]["id"]
    response = await client.patch(path.format(id=print_.id), headers=owner.headers, json=make_body(fid))
    assert response.status_code == 400, response.text
    body = response.json()
    assert {name.split(".")[0] for name in body} == bad_fields
    assert all(isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages)
               for messages in body.values())
    assert await get_print(client, owner, print_.id) == before


async def test_patch_body_that_is_not_an_object_or_not_json(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, finished_at=now())
    url = f"/api/v1/prints/{print_.id}/"
    before = await get_print(client, owner, print_.id)
    not_object = await client.patch(url, headers=owner.headers, json=["FAILED"])
    assert not_object.status_code == 400
    broken = await client.patch(url, headers={**owner.headers, "Content-Type": "application/json"},
                                content=b'{"alert_overwrite": "FAI')
    assert broken.status_code == 400
    assert isinstance(broken.json()["detail"], str)
    assert await get_print(client, owner, print_.id) == before


async def test_unknown_feedback_id_is_400_and_changes_nothing(client, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=2, finished_at=now())
    sibling = await farm.print(printer, feedback=1, finished_at=now())
    stranger = await farm.member(organization="B")
    their_print = await farm.print(await farm.printer(stranger), feedback=1, finished_at=now())

    mine = await feedback_ids(client, owner, print_.id)
    [siblings] = await feedback_ids(client, owner, sibling.id)
    [theirs] = await feedback_ids(client, stranger, their_print.id)
    before = await get_print(client, owner, print_.id)
    sibling_before = await get_print(client, owner, sibling.id)
    their_before = await get_print(client, stranger, their_print.id)

    for unknown in (999_999, siblings, theirs):
        response = await client.patch(f"/api/v1/prints/{print_.id}/", headers=owner.headers, json={
            "alert_overwrite": "FAILED",
            "printshotfeedback_set": [
                {"id": mine[0], "answer": "LOOKS_BAD"}, {"id": unknown, "answer": "LOOKS_BAD"},
            ],
        })
        assert response.status_code == 400, unknown
        body = response.json()
        assert set(body) == {"printshotfeedback_set"}
        assert any(str(unknown) in message for message in body["printshotfeedback_set"])
        assert await get_print(client, owner, print_.id) == before
    assert await get_print(client, owner, sibling.id) == sibling_before
    assert await get_print(client, stranger, their_print.id) == their_before


# --- roles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_viewer_may_read_but_not_change(client, farm: Farm, path: str) -> None:
    owner = await farm.member(organization="A")
    viewer = await farm.member(Role.VIEWER, organization="A")
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=1, finished_at=now())
    url = path.format(id=print_.id)
    before = await get_print(client, owner, print_.id)
    [fid] = await feedback_ids(client, owner, print_.id)

    assert await ids(client, viewer) == [print_.id]
    read = await client.get(url, headers=viewer.headers)
    assert read.status_code == 200 and read.json() == before
    prediction = await client.get(f"/api/v1/prints/{print_.id}/prediction_json", headers=viewer.headers)
    assert prediction.status_code == 200

    answer = {"printshotfeedback_set": [{"id": fid, "answer": "LOOKS_BAD"}]}
    for body in ({"alert_overwrite": "FAILED"}, answer, {}):
        response = await client.patch(url, headers=viewer.headers, json=body)
        assert response.status_code == 403, body
        assert "detail" in response.json()
    delete = await client.delete(url, headers=viewer.headers)
    assert delete.status_code == 403
    assert await get_print(client, owner, print_.id) == before


@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_operator_may_patch_but_not_delete(client, farm: Farm, path: str) -> None:
    owner = await farm.member(organization="A")
    operator = await farm.member(Role.OPERATOR, organization="A")
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, feedback=1, finished_at=now())
    url = path.format(id=print_.id)
    [fid] = await feedback_ids(client, owner, print_.id)
    response = await client.patch(url, headers=operator.headers, json={
        "alert_overwrite": "NOT_FAILED", "printshotfeedback_set": [{"id": fid, "answer": "LOOKS_OK"}],
    })
    assert response.status_code == 200, response.text
    assert response.json()["alert_overwrite"] == "NOT_FAILED"
    delete = await client.delete(url, headers=operator.headers)
    assert delete.status_code == 403 and "detail" in delete.json()
    still = await get_print(client, owner, print_.id)
    assert still["alert_overwrite"] == "NOT_FAILED"
    assert still["printshotfeedback_set"][0]["answer"] == "LOOKS_OK"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
async def test_admins_may_delete(client, farm: Farm, role: Role) -> None:
    owner = await farm.member(organization="A")
    member = await farm.member(role, organization="A")
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, finished_at=now())
    response = await client.delete(f"/api/v1/print/{print_.id}/", headers=member.headers)
    assert response.status_code == 200
    assert (await client.get(f"/api/v1/prints/{print_.id}/", headers=owner.headers)).status_code == 404


# --- another organization -------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.VIEWER])
async def test_another_organizations_print_is_not_found(client, farm: Farm, role: Role) -> None:
    theirs = await farm.member(organization="B")
    mine = await farm.member(role, organization="A")
    their_printer = await farm.printer(theirs, "secret printer")
    their_print = await farm.print(their_printer, feedback=1, filename="secret-part.gcode", finished_at=now())
    [fid] = await feedback_ids(client, theirs, their_print.id)
    before = await get_print(client, theirs, their_print.id)

    assert await ids(client, mine) == []
    for filter_ in ("finished", "need_alert_overwrite", "need_print_shot_feedback"):
        assert await ids(client, mine, f"?filter={filter_}&sorting=date_desc") == []
    change = {"alert_overwrite": "FAILED", "printshotfeedback_set": [{"id": fid, "answer": "LOOKS_BAD"}]}
    for path in SINGLE_PATHS:
        url = path.format(id=their_print.id)
        for method in ("GET", "PATCH", "DELETE"):
            response = await client.request(method, url, headers=mine.headers, json=change)
            assert response.status_code == 404, (method, url)
            assert response.json() == {"detail": "Not found."}
            assert "secret" not in response.text
    prediction = await client.get(f"/api/v1/prints/{their_print.id}/prediction_json", headers=mine.headers)
    assert prediction.status_code == 404
    assert await get_print(client, theirs, their_print.id) == before


# --- DELETE ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SINGLE_PATHS)
async def test_delete_removes_the_print_and_its_feedback(client, farm: Farm, path: str) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    doomed = await farm.print(printer, feedback=2, finished_at=now())
    kept = await farm.print(printer, feedback=1, finished_at=now())
    response = await client.delete(path.format(id=doomed.id), headers=owner.headers)
    assert response.status_code == 200
    assert response.content == b""
    for single in SINGLE_PATHS:
        assert (await client.get(single.format(id=doomed.id), headers=owner.headers)).status_code == 404
    assert (await client.delete(path.format(id=doomed.id), headers=owner.headers)).status_code == 404
    assert await ids(client, owner) == [kept.id]

    async def count_feedback(session) -> dict[int, int]:
        rows = await session.execute(
            select(PrintShotFeedback.print_id, func.count()).group_by(PrintShotFeedback.print_id)
        )
        return dict(rows.all())

    assert await farm.run(count_feedback) == {kept.id: 1}
    assert (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).status_code == 200


async def test_deleting_the_current_print_leaves_the_printer_idle(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True, feedback=1)
    response = await client.delete(f"/api/v1/prints/{print_.id}/", headers=owner.headers)
    assert response.status_code == 200
    body = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert body["current_print"] is None

    async def current_print_id(session) -> int | None:
        return (await session.get(Printer, printer.id)).current_print_id

    assert await farm.run(current_print_id) is None

    async def remaining(session) -> int:
        return (await session.execute(select(func.count()).select_from(Print))).scalar_one()

    assert await farm.run(remaining) == 0


async def test_unauthenticated_requests_are_401(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    print_ = await farm.print(printer, finished_at=now())
    for method, url in [("GET", "/api/v1/prints/"), ("GET", f"/api/v1/prints/{print_.id}/"),
                        ("PATCH", f"/api/v1/prints/{print_.id}/"), ("DELETE", f"/api/v1/print/{print_.id}/")]:
        response = await client.request(method, url, json={"alert_overwrite": "FAILED"})
        assert response.status_code == 401, (method, url)
        assert "detail" in response.json()
    assert (await get_print(client, owner, print_.id))["alert_overwrite"] is None

