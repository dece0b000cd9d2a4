"""Authentication: API tokens, the session cookie of the web sign-in, and what guards them."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import pytest
from sqlalchemy import select

from conftest import Farm, Member
from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User, WebSession
from layerfleet.accounts.passwords import verify_password
from layerfleet.app import SESSION_COOKIE
from layerfleet.ratelimit import RateLimiter
from layerfleet.web import auth as routes

PASSWORD = "password-123"  # what the farm fixture gives every member
ORIGIN = "http://testserver"


@pytest.fixture(autouse=True)
def fresh_throttle(monkeypatch: pytest.MonkeyPatch) -> Iterator[RateLimiter]:
    """Failed sign-ins of one test must not block another's (the throttle is process-wide)."""
    throttle = RateLimiter(routes.LOGIN_ATTEMPTS, routes.LOGIN_WINDOW_SECONDS)
    monkeypatch.setattr(routes, "throttle", throttle)
    yield throttle


async def login(client, email: str, password: str = PASSWORD, **extra: str):
    return await client.post("/accounts/login/", data={"email": email, "password": password, **extra})


async def me(client, **headers: str):
    return await client.get("/api/v1/users/me/", headers=headers)


async def set_user(farm: Farm, user_id: int, **fields) -> None:
    async def work(session) -> None:
        user = await session.get(User, user_id)
        for key, value in fields.items():
            setattr(user, key, value)
        await session.commit()

    await farm.run(work)


async def change_password(farm: Farm, user_id: int, password: str) -> None:
    async def work(session) -> None:
        await accounts.set_password(session, await session.get(User, user_id), password)
        await session.commit()

    await farm.run(work)


# --- no credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/printers/"), ("GET", "/api/v1/printers/1/"), ("PATCH", "/api/v1/printers/1/"),
        ("DELETE", "/api/v1/printers/1/"), ("POST", "/api/v1/printers/1/pause_print"),
        ("GET", "/api/v1/prints/"), ("GET", "/api/v1/print/1/"), ("GET", "/api/v1/users/me/"),
    ],
)
async def test_no_credentials_is_401_json(client, farm: Farm, method: str, path: str) -> None:
    await farm.member()
    response = await client.request(method, path)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert "www-authenticate" in response.headers


# --- API tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "token", "BEARER"])
async def test_token_and_bearer_schemes_both_work(client, farm: Farm, scheme: str) -> None:
    member = await farm.member()
    response = await me(client, Authorization=f"{scheme} {member.token}")
    assert response.status_code == 200
    assert response.json()["email"] == member.user.email
    printers = await client.get("/api/v1/printers/", headers={"Authorization": f"{scheme} {member.token}"})
    assert printers.status_code == 200


async def test_token_identifies_its_own_user(client, farm: Farm) -> None:
    first = await farm.member(organization="A")
    second = await farm.member(organization="B")
    await farm.printer(first, "A's printer")
    assert (await me(client, **first.headers)).json()["email"] == first.user.email
    assert (await me(client, **second.headers)).json()["email"] == second.user.email
    listed = (await client.get("/api/v1/printers/", headers=second.headers)).json()
    assert listed == []


@pytest.mark.parametrize(
    "header",
    [
        "Token lf_thisIsNotARealKey0000000000000000000000",
        "Bearer lf_thisIsNotARealKey0000000000000000000000",
        "Token",
        "Token ",
        "Bearer",
        "Basic dXNlcjpwYXNzd29yZA==",
        "Digest username=x",
        # The right key under any other scheme is refused too.
        "Basic {key}",
        "Digest {key}",
        "Key {key}",
        "Token {key} {key}",
        "{key}",
        "Tokens {key}",
        "Token{key}",
        "Token {key}x",
        "Token {key_head}",
    ],
)
async def test_wrong_key_or_malformed_header_is_401(client, farm: Farm, header: str) -> None:
    member = await farm.member()
    value = header.format(key=member.token, key_head=member.token[:10])
    response = await me(client, Authorization=value)
    assert response.status_code == 401, value
    assert isinstance(response.json()["detail"], str)
    assert member.user.email not in response.text


async def test_revoked_token_is_401(client, farm: Farm) -> None:
    member = await farm.member()

    async def issue(session) -> tuple[int, str]:
        user = await session.get(User, member.user.id)
        issued = await accounts.create_api_token(session, user, "laptop")
        await session.commit()
        return issued.token.id, issued.key

    token_id, key = await farm.run(issue)
    assert (await me(client, Authorization=f"Token {key}")).status_code == 200

    # Another user cannot revoke it.
    stranger = await farm.member(organization="B")

    async def revoke_as(user_id: int) -> bool:
        async def work(session) -> bool:
            user = await session.get(User, user_id)
            revoked = await accounts.revoke_api_token(session, user, token_id)
            await session.commit()
            return revoked

        return await farm.run(work)

    assert await revoke_as(stranger.user.id) is False
    assert (await me(client, Authorization=f"Token {key}")).status_code == 200

    assert await revoke_as(member.user.id) is True
    for scheme in ("Token", "Bearer"):
        response = await me(client, Authorization=f"{scheme} {key}")
        assert response.status_code == 401
        assert "detail" in response.json()
    # The member's other token is untouched.
    assert (await me(client, **member.headers)).status_code == 200


async def test_token_of_a_deactivated_user_is_401(client, farm: Farm) -> None:
    member = await farm.member()
    await set_user(farm, member.user.id, is_active=False)
    assert (await me(client, **member.headers)).status_code == 401


async def test_tokens_are_stored_only_as_hashes(client, farm: Farm) -> None:
    member = await farm.member()

    async def stored(session) -> list[str]:
        from layerfleet.accounts.models import ApiToken

        rows = (await session.execute(select(ApiToken))).scalars().all()
        return [str(getattr(row, column.key)) for row in rows for column in ApiToken.__table__.columns]

    values = await farm.run(stored)
    assert values
    assert not any(member.token in value for value in values)


# --- session sign-in ----------------------------------------------------------------------------------


async def test_login_sets_a_session_that_authenticates_the_api(client, farm: Farm) -> None:
    member = await farm.member()
    printer = await farm.printer(member, "session printer")
    assert SESSION_COOKIE not in client.cookies

    response = await login(client, member.user.email)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.cookies.get(SESSION_COOKIE)

    printers = await client.get("/api/v1/printers/")
    assert printers.status_code == 200
    assert [p["id"] for p in printers.json()] == [printer.id]
    whoami = await me(client)
    assert whoami.status_code == 200
    assert whoami.json()["email"] == member.user.email

    async def last_login(session):
        return (await session.get(User, member.user.id)).last_login_at

    assert await farm.run(last_login) is not None


async def test_login_email_is_case_insensitive(client, farm: Farm) -> None:
    member = await farm.member()
    response = await login(client, f"  {member.user.email.upper()} ")
    assert response.status_code == 303
    assert (await me(client)).json()["email"] == member.user.email


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("{email}", "password-124"),
        ("{email}", f" {PASSWORD}"),
        ("{email}", "PASSWORD-123"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
    ],
)
async def test_wrong_credentials_are_400_and_start_no_session(client, farm: Farm, email: str, password: str) -> None:
    member = await farm.member()
    response = await login(client, email.format(email=member.user.email), password)
    assert response.status_code == 400
    assert "do not match" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert SESSION_COOKIE not in client.cookies
    assert (await me(client)).status_code == 401


async def test_login_without_a_password_is_400_and_starts_no_session(client, farm: Farm) -> None:
    member = await farm.member()
    for data in ({"email": member.user.email, "password": ""}, {"email": member.user.email}, {}):
        response = await client.post("/accounts/login/", data=data)
        assert response.status_code == 400, data
        assert SESSION_COOKIE not in client.cookies
    assert (await me(client)).status_code == 401


async def test_deactivated_user_cannot_sign_in_and_loses_the_session(client, farm: Farm) -> None:
    member = await farm.member()
    assert (await login(client, member.user.email)).status_code == 303
    assert (await me(client)).status_code == 200
    await set_user(farm, member.user.id, is_active=False)
    assert (await me(client)).status_code == 401
    client.cookies.clear()
    assert (await login(client, member.user.email)).status_code == 400
    assert SESSION_COOKIE not in client.cookies


async def test_logout_ends_the_session(client, farm: Farm) -> None:
    member = await farm.member()
    await login(client, member.user.email)
    assert (await me(client)).status_code == 200
    stolen = client.cookies[SESSION_COOKIE]
    response = await client.post("/accounts/logout/")
    assert response.status_code == 303
    assert response.headers["location"] == "/accounts/login/"
    assert SESSION_COOKIE not in client.cookies
    assert (await me(client)).status_code == 401
    assert (await client.get("/api/v1/printers/")).status_code == 401
    # The session ended on the server: a copy of the cookie taken before is worthless.
    assert (await me(client, Cookie=f"{SESSION_COOKIE}={stolen}")).status_code == 401


async def test_a_second_login_replaces_the_first_users_session(client, farm: Farm) -> None:
    first = await farm.member(organization="A")
    second = await farm.member(organization="B")
    await login(client, first.user.email)
    assert (await me(client)).json()["email"] == first.user.email
    await login(client, second.user.email)
    assert (await me(client)).json()["email"] == second.user.email


async def test_authorization_header_takes_precedence_over_the_session(client, farm: Farm) -> None:
    session_member = await farm.member(organization="A")
    token_member = await farm.member(organization="B")
    await login(client, session_member.user.email)
    assert (await me(client, **token_member.headers)).json()["email"] == token_member.user.email
    # A bad header is refused even with a good cookie: no silent fall-back.
    assert (await me(client, Authorization="Token wrong")).status_code == 401


async def test_password_change_ends_existing_sessions(client, farm: Farm) -> None:
    member = await farm.member()
    await login(client, member.user.email)
    assert (await me(client)).status_code == 200

    await change_password(farm, member.user.id, "a-new-password-456")
    assert (await me(client)).status_code == 401
    assert (await client.get("/api/v1/printers/")).status_code == 401

    assert (await login(client, member.user.email, PASSWORD)).status_code == 400
    assert (await login(client, member.user.email, "a-new-password-456")).status_code == 303
    assert (await me(client)).status_code == 200


async def test_session_cookie_cannot_be_forged(client, farm: Farm) -> None:
    member = await farm.member()
    await login(client, member.user.email)
    cookie = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    assert (await me(client, Cookie=f"{SESSION_COOKIE}={cookie}")).status_code == 200
    payload, _, signature = cookie.partition(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    assert (await me(client, Cookie=f"{SESSION_COOKIE}={tampered}.{signature}")).status_code == 401
    unsigned = "eyJ1c2VyX2lkIjogMX0="  # {"user_id": 1}
    assert (await me(client, Cookie=f"{SESSION_COOKIE}={unsigned}")).status_code == 401


# --- cross-site requests with the session cookie ---------------------------------------------------------


async def patch_printer(client, printer_id: int, name: str, **headers: str):
    return await client.patch(f"/api/v1/printers/{printer_id}/", json={"name": name}, headers=headers)


async def printer_name(client, member: Member, printer_id: int) -> str:
    return (await client.get(f"/api/v1/printers/{printer_id}/", headers=member.headers)).json()["name"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "https://evil.example"},
        {"Origin": "http://testserver.evil.example"},
        {"Origin": "http://evil.example/testserver"},
        {"Origin": "null"},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_site_changes_with_the_cookie_are_refused(client, farm: Farm, headers: dict[str, str]) -> None:
    member = await farm.member()
    printer = await farm.printer(member, "original")
    print_ = await farm.print(printer)
    await login(client, member.user.email)

    response = await patch_printer(client, printer.id, "changed", **headers)
    assert response.status_code == 403
    assert "detail" in response.json()
    assert await printer_name(client, member, printer.id) == "original"

    response = await client.patch(f"/api/v1/prints/{print_.id}/", json={"alert_overwrite": "FAILED"},
                                  headers=headers)
    assert response.status_code == 403
    response = await client.delete(f"/api/v1/prints/{print_.id}/", headers=headers)
    assert response.status_code == 403
    response = await client.post(f"/api/v1/printers/{printer.id}/pause_print", headers=headers)
    assert response.status_code == 403
    body = (await client.get(f"/api/v1/prints/{print_.id}/", headers=member.headers)).json()
    assert body["alert_overwrite"] is None
    # Reading stays possible: a cross-site GET cannot change anything.
    assert (await client.get("/api/v1/printers/", headers=headers)).status_code == 200


async def test_same_origin_changes_with_the_cookie_work(client, farm: Farm) -> None:
    member = await farm.member()
    printer = await farm.printer(member, "original")
    await login(client, member.user.email)
    response = await patch_printer(client, printer.id, "same origin", Origin=ORIGIN)
    assert response.status_code == 200, response.text
    assert await printer_name(client, member, printer.id) == "same origin"
    response = await patch_printer(client, printer.id, "same site", Origin=ORIGIN, **{"Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 200
    assert await printer_name(client, member, printer.id) == "same site"


async def test_token_requests_are_not_subject_to_the_origin_check(client, farm: Farm) -> None:
    member = await farm.member()
    printer = await farm.printer(member, "original")
    response = await patch_printer(client, printer.id, "by token", Origin="http://elsewhere.example",
                                   **member.headers)
    assert response.status_code == 200
    assert await printer_name(client, member, printer.id) == "by token"


# --- login throttle ---------------------------------------------------------------------------------------


async def test_throttle_answers_429_after_ten_failures(client, farm: Farm, fresh_throttle) -> None:
    member = await farm.member()
    assert routes.throttle is fresh_throttle
    for attempt in range(10):
        response = await login(client, member.user.email, f"wrong-{attempt}")
        assert response.status_code == 400, attempt
    blocked = await login(client, member.user.email, "wrong-again")
    assert blocked.status_code == 429
    # Even the right password is refused while blocked, and no session starts.
    blocked = await login(client, member.user.email)
    assert blocked.status_code == 429
    assert SESSION_COOKIE not in client.cookies
    assert (await me(client)).status_code == 401


async def test_a_successful_login_resets_the_throttle(client, farm: Farm) -> None:
    member = await farm.member()
    for _ in range(9):
        assert (await login(client, member.user.email, "wrong-password")).status_code == 400
    assert (await login(client, member.user.email)).status_code == 303
    client.cookies.clear()
    for _ in range(9):
        assert (await login(client, member.user.email, "wrong-password")).status_code == 400
    assert (await login(client, member.user.email)).status_code == 303


async def test_unknown_emails_count_towards_the_throttle(client, farm: Farm) -> None:
    await farm.member()
    for n in range(10):
        assert (await login(client, f"nobody{n}@example.com", "whatever-1")).status_code == 400
    assert (await login(client, "nobody@example.com", "whatever-1")).status_code == 429


# --- where sign-in sends you next ---------------------------------------------------------------------------


def browser_destination(location: str, current: str = f"{ORIGIN}/accounts/login/") -> str:
    """Where a browser goes with this Location: it drops tabs and newlines, reads "\\" as "/"."""
    cleaned = "".join(c for c in location if c not in "\t\n\r").strip("\x00 ").replace("\\", "/")
    return urljoin(current, cleaned)


@pytest.mark.parametrize(
    "target",
    [
        "//evil.com", "http://evil.com", "https://evil.com/accounts/", "//evil.com/path", "///evil.com",
        "/\\evil.com", "\\\\evil.com", "/\t/evil.com", "/%2F/evil.com", "evil.com", "javascript:alert(1)",
        " //evil.com", "HTTP://evil.com", "http:evil.com",
    ],
)
async def test_login_next_never_leaves_the_site(client, farm: Farm, target: str) -> None:
    member = await farm.member()
    response = await login(client, member.user.email, next=target)
    assert response.status_code == 303
    destination = browser_destination(response.headers["location"])
    assert urlsplit(destination).scheme == "http"
    assert urlsplit(destination).netloc == "testserver", destination
    assert "evil.com" not in urlsplit(destination).netloc


@pytest.mark.parametrize("target", ["/", "/printers/", "/printers/3/?tab=prints#latest"])
async def test_login_next_keeps_local_paths(client, farm: Farm, target: str) -> None:
    member = await farm.member()
    response = await login(client, member.user.email, next=target)
    assert response.status_code == 303
    assert response.headers["location"] == target


async def test_login_page_does_not_carry_a_foreign_next(client, farm: Farm) -> None:
    page = await client.get("/accounts/login/", params={"next": "//evil.com"})
    assert page.status_code == 200
    assert "evil.com" not in page.text
    local = await client.get("/accounts/login/", params={"next": "/printers/"})
    assert 'value="/printers/"' in local.text


async def test_failed_login_with_next_keeps_only_a_local_next(client, farm: Farm) -> None:
    member = await farm.member()
    response = await login(client, member.user.email, "wrong-password", next="https://evil.com/")
    assert response.status_code == 400
    assert "evil.com" not in response.text


# --- passwords at rest --------------------------------------------------------------------------------------


async def test_passwords_are_stored_as_argon2_hashes(client, farm: Farm) -> None:
    first = await farm.member()
    second = await farm.member(Role.VIEWER)

    async def rows(session) -> list[dict[str, str]]:
        users = (await session.execute(select(User).order_by(User.id))).scalars().all()
        return [{c.key: str(getattr(u, c.key)) for c in User.__table__.columns} for u in users]

    stored = await farm.run(rows)
    assert [row["id"] for row in stored] == [str(first.user.id), str(second.user.id)]
    hashes = [row["password_hash"] for row in stored]
    for row in stored:
        assert row["password_hash"].startswith("$argon2id$")
        assert verify_password(row["password_hash"], PASSWORD)
        assert not verify_password(row["password_hash"], "password-124")
        assert all(PASSWORD not in value for value in row.values())
    # Salted: the same password hashes differently for each user.
    assert hashes[0] != hashes[1]


async def test_the_session_cookie_carries_only_a_random_key(client, farm: Farm) -> None:
    member = await farm.member()
    await login(client, member.user.email)
    payload = client.cookies[SESSION_COOKIE].split(".", 1)[0]
    session = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(session) == {"sid"} and len(session["sid"]) >= 40
    assert PASSWORD not in json.dumps(session)
    assert member.user.password_hash[-8:] not in json.dumps(session)

    async def stored(session):
        return (await session.execute(select(WebSession))).scalars().all()

    [row] = await farm.run(stored)
    assert row.user_id == member.user.id and row.key_hash != session["sid"]


@pytest.mark.parametrize(
    "headers", [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}]
)
async def test_a_sign_in_sent_from_another_site_is_refused(client, farm: Farm, headers: dict[str, str]) -> None:
    member = await farm.member()
    response = await client.post(
        "/accounts/login/", data={"email": member.user.email, "password": PASSWORD}, headers=headers
    )
    assert response.status_code == 403
    assert "another site" in response.text
    assert SESSION_COOKIE not in client.cookies
    assert (await me(client)).status_code == 401


async def test_the_configured_public_url_counts_as_our_origin(client, farm: Farm, monkeypatch) -> None:
    # Behind a proxy that rewrites Host, the browser's Origin is the public URL.
    member = await farm.member()
    printer = await farm.printer(member, "before")
    settings = client._transport.app.state.services.settings
    monkeypatch.setattr(settings, "base_url", "https://farm.example.org/")
    origin = {"Origin": "https://farm.example.org"}
    assert (await login(client, member.user.email, **{})).status_code == 303
    response = await client.patch(f"/api/v1/printers/{printer.id}/", json={"name": "after"}, headers=origin)
    assert response.status_code == 200 and response.json()["name"] == "after"
    other = await client.patch(f"/api/v1/printers/{printer.id}/", json={"name": "x"},
                               headers={"Origin": "https://farm.example.org.evil.example"})
    assert other.status_code == 403


def test_the_throttle_forgets_quiet_addresses_and_stays_bounded() -> None:
    throttle = RateLimiter(calls=2, window=0.05, max_tracked=3)
    for address in ["a", "b", "c", "d", "e"]:
        throttle.record(address)
    assert len(throttle._hits) == 3 and "a" not in throttle._hits
    throttle.record("e")
    assert throttle.blocked("e") and not throttle.blocked("a")
    time.sleep(0.06)
    assert not throttle.blocked("e")
    for address in ["x", "y", "z", "w"]:
        throttle.record(address)
    # Past the bound, addresses whose failures are old go first, then the oldest ones.
    assert list(throttle._hits) == ["y", "z", "w"]
