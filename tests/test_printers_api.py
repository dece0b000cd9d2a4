"""Printer API (seed 003) on every database backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conftest import PAUSED, PRINTING, Farm, now
from layerfleet.accounts.models import Role
from layerfleet.fleet import watch_reasons as watching

PRINTER_FIELDS = {
    "id", "name", "created_at", "action_on_failure", "watching_enabled", "not_watching_reason",
    "tools_off_on_pause", "bed_off_on_pause", "retract_on_pause", "lift_z_on_pause",
    "detective_sensitivity", "pic", "status", "settings", "current_print", "normalized_p", "auth_token",
}


async def test_list_has_every_field_of_the_printer_object(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "MK4 #1", status=PRINTING)
    await farm.print(printer, current=True, filename="benchy.gcode")
    response = await client.get("/api/v1/printers/", headers=owner.headers)
    assert response.status_code == 200
    [body] = response.json()
    assert set(body) >= PRINTER_FIELDS
    assert body["name"] == "MK4 #1"
    assert body["action_on_failure"] == "PAUSE"
    assert body["detective_sensitivity"] == 1.0
    assert body["retract_on_pause"] == 6.5 and body["lift_z_on_pause"] == 2.5
    assert body["auth_token"] == printer.auth_token
    assert body["status"]["state"]["text"] == "Printing"
    assert body["current_print"]["filename"] == "benchy.gcode"
    assert body["current_print"]["printer"] == printer.id
    assert body["settings"]["webcam_streamRatio"] == "4:3"
    assert body["pic"] is None
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]


async def test_archived_printers_only_with_archived(client, farm: Farm) -> None:
    owner = await farm.member()
    active = await farm.printer(owner, "active")
    archived = await farm.printer(owner, "archived", archived_at=now())
    plain = await client.get("/api/v1/printers/", headers=owner.headers)
    assert [p["id"] for p in plain.json()] == [active.id]
    both = await client.get("/api/v1/printers/?with_archived=true", headers=owner.headers)
    assert [p["id"] for p in both.json()] == [active.id, archived.id]
    bad = await client.get("/api/v1/printers/?with_archived=maybe", headers=owner.headers)
    assert bad.status_code == 400 and "with_archived" in bad.json()


async def test_another_organizations_printer_is_not_found(client, farm: Farm) -> None:
    mine = await farm.member(organization="A")
    theirs = await farm.member(organization="B")
    their_printer = await farm.printer(theirs, "secret printer", status=PRINTING)
    await farm.connect_agent(their_printer)
    assert (await client.get("/api/v1/printers/", headers=mine.headers)).json() == []
    url = f"/api/v1/printers/{their_printer.id}/"
    for method, path in [
        ("GET", url), ("PATCH", url), ("DELETE", url),
        ("POST", url + "pause_print"), ("POST", url + "cancel_print"), ("POST", url + "resume_print"),
        ("POST", url + "mute_current_print"), ("POST", url + "acknowledge_alert"),
    ]:
        response = await client.request(method, path, headers=mine.headers, json={"name": "stolen"})
        assert response.status_code == 404, (method, path)
        assert "secret printer" not in response.text
    # …and it is untouched.
    check = await client.get(url, headers=theirs.headers)
    assert check.json()["name"] == "secret printer"


async def test_viewer_of_another_organization_gets_404_not_403(client, farm: Farm) -> None:
    theirs = await farm.member(organization="B")
    printer = await farm.printer(theirs)
    viewer = await farm.member(Role.VIEWER, organization="A")
    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=viewer.headers, json={"name": "x"})
    assert response.status_code == 404


async def test_missing_printer_is_404_json(client, farm: Farm) -> None:
    owner = await farm.member()
    for path in ["/api/v1/printers/999999/", "/api/v1/printers/abc/", "/api/v1/printers/0/"]:
        response = await client.get(path, headers=owner.headers)
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}


async def test_patch_changes_writable_fields(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "old")
    changes = {
        "name": "  new name ", "action_on_failure": "NONE", "watching_enabled": False,
        "tools_off_on_pause": False, "bed_off_on_pause": True, "retract_on_pause": 3,
        "lift_z_on_pause": 10.5, "detective_sensitivity": 1.2,
    }
    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers, json=changes)
    assert response.status_code == 200, response.text
    again = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    for body in (response.json(), again):
        assert body["name"] == "new name"
        assert body["action_on_failure"] == "NONE"
        assert body["watching_enabled"] is False
        assert body["tools_off_on_pause"] is False and body["bed_off_on_pause"] is True
        assert body["retract_on_pause"] == 3.0 and body["lift_z_on_pause"] == 10.5
        assert body["detective_sensitivity"] == 1.2
        assert body["not_watching_reason"] == watching.REASON_DISABLED


async def test_patch_ignores_read_only_fields(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    before = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    read_only = {
        "id": 12345, "created_at": "2001-01-01T00:00:00Z", "not_watching_reason": "nope",
        "pic": {"img_url": "http://evil/x.jpg"}, "status": {"state": {"text": "Hacked"}},
        "settings": {"agent_name": "evil"}, "current_print": None, "normalized_p": 0.99,
        "auth_token": "chosen-by-client",
    }
    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers, json=read_only)
    assert response.status_code == 200
    after = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert after == before


@pytest.mark.parametrize(
    ("changes", "bad_fields"),
    [
        ({"detective_sensitivity": 1.3}, {"detective_sensitivity"}),
        ({"detective_sensitivity": 0.79}, {"detective_sensitivity"}),
        ({"detective_sensitivity": "high"}, {"detective_sensitivity"}),
        ({"action_on_failure": "EXPLODE"}, {"action_on_failure"}),
        ({"watching_enabled": "yes"}, {"watching_enabled"}),
        ({"retract_on_pause": -1}, {"retract_on_pause"}),
        ({"lift_z_on_pause": True}, {"lift_z_on_pause"}),
        ({"name": ""}, {"name"}),
        ({"name": None}, {"name"}),
        ({"name": 42}, {"name"}),
        ({"archived_at": "yesterday"}, {"archived_at"}),
        # one bad field among good ones: nothing at all is applied
        ({"name": "fine", "detective_sensitivity": 2, "action_on_failure": "bad"},
         {"detective_sensitivity", "action_on_failure"}),
    ],
)
async def test_invalid_patch_is_400_per_field_and_changes_nothing(client, farm: Farm, changes, bad_fields) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, "unchanged")
    before = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=owner.headers, json=changes)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == bad_fields
    assert all(isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages)
               for messages in body.values())
    after = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert after == before


async def test_patch_body_that_is_not_an_object_or_not_json(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    url = f"/api/v1/printers/{printer.id}/"
    not_object = await client.patch(url, headers=owner.headers, json=[1, 2])
    assert not_object.status_code == 400
    broken = await client.patch(url, headers={**owner.headers, "Content-Type": "application/json"}, content=b"{nope")
    assert broken.status_code == 400
    assert "detail" in broken.json()


async def test_archive_and_unarchive_through_patch(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    url = f"/api/v1/printers/{printer.id}/"
    archived = await client.patch(url, headers=owner.headers, json={"archived_at": "2026-01-02T03:04:05Z"})
    assert archived.json()["archived_at"].startswith("2026-01-02T03:04:05")
    assert (await client.get("/api/v1/printers/", headers=owner.headers)).json() == []
    await client.patch(url, headers=owner.headers, json={"archived_at": None})
    assert len((await client.get("/api/v1/printers/", headers=owner.headers)).json()) == 1


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
async def test_only_admins_change_or_delete_printers(client, farm: Farm, role: Role) -> None:
    owner = await farm.member(organization="A")
    member = await farm.member(role, organization="A")
    printer = await farm.printer(owner, "keep")
    url = f"/api/v1/printers/{printer.id}/"
    assert (await client.get(url, headers=member.headers)).status_code == 200
    patch = await client.patch(url, headers=member.headers, json={"name": "changed"})
    assert patch.status_code == 403 and "detail" in patch.json()
    assert (await client.delete(url, headers=member.headers)).status_code == 403
    assert (await client.get(url, headers=owner.headers)).json()["name"] == "keep"


async def test_admin_may_change_printers(client, farm: Farm) -> None:
    owner = await farm.member(organization="A")
    admin = await farm.member(Role.ADMIN, organization="A")
    printer = await farm.printer(owner)
    response = await client.patch(f"/api/v1/printers/{printer.id}/", headers=admin.headers, json={"name": "by admin"})
    assert response.status_code == 200 and response.json()["name"] == "by admin"


async def test_delete_printer_removes_it_and_its_prints(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner, status=PRINTING)
    print_ = await farm.print(printer, current=True, feedback=2)
    response = await client.delete(f"/api/v1/printers/{printer.id}/", headers=owner.headers)
    assert response.status_code == 200 and response.content == b""
    assert (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).status_code == 404
    assert (await client.get(f"/api/v1/prints/{print_.id}/", headers=owner.headers)).status_code == 404
    assert (await client.delete(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).status_code == 404


class TestNotWatchingReason:
    """The four rules of seed 001, in their order."""

    async def reason(self, client, farm: Farm, *, watching=True, dh=5.0, status=PRINTING, current=True,
                     muted=False) -> str | None:
        owner = await farm.member(dh_balance=dh)
        printer = await farm.printer(owner, status=status, watching_enabled=watching)
        if current:
            await farm.print(printer, current=True, alert_muted_at=now() if muted else None)
        body = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
        return body["not_watching_reason"]

    async def test_watched(self, client, farm: Farm) -> None:
        assert await self.reason(client, farm) is None

    async def test_disabled(self, client, farm: Farm) -> None:
        reason = await self.reason(client, farm, watching=False, dh=0, current=False, muted=True)
        assert reason == "AI failure detection is disabled"

    @pytest.mark.parametrize("dh", [0.0, -0.5])
    async def test_out_of_detection_hours(self, client, farm: Farm, dh: float) -> None:
        assert await self.reason(client, farm, dh=dh, current=False) == "You have run out of AI Detection Hours"

    async def test_no_current_print(self, client, farm: Farm) -> None:
        assert await self.reason(client, farm, current=False) == "Printer is not actively printing"

    async def test_paused(self, client, farm: Farm) -> None:
        assert await self.reason(client, farm, status=PAUSED, muted=True) == "Printer is not actively printing"

    async def test_muted(self, client, farm: Farm) -> None:
        assert await self.reason(client, farm, muted=True) == "Alerts are muted for current print"


async def test_ended_print_timestamps_serialize_in_utc(client, farm: Farm) -> None:
    owner = await farm.member()
    printer = await farm.printer(owner)
    started = now() - timedelta(hours=2)
    await farm.print(printer, current=True, started_at=started)
    body = (await client.get(f"/api/v1/printers/{printer.id}/", headers=owner.headers)).json()
    assert body["current_print"]["started_at"].startswith(started.strftime("%Y-%m-%dT%H:%M"))
