"""Test fixtures: every database test runs on SQLite and, when it answers (always in CI),
on PostgreSQL at 127.0.0.1:5432, in a database of this run's own (created at the start and
dropped at the end, so two runs on one machine never meet), or the database
``LAYERFLEET_TEST_POSTGRES_URL`` names. The schema comes from the migrations.

The run ends with a summary of the real parts it exercised (PostgreSQL, Redis, OctoPrint,
Moonraker, PrusaSlicer, Chromium, nginx, Mosquitto, an SMTP server) and, for each it skipped, why."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import secrets
import shutil
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from layerfleet.accounts import service as accounts
from layerfleet.accounts.models import Role, User
from layerfleet.app import create_app
from layerfleet.commands.bus import AgentMessage, InProcessCommandBus
from layerfleet.config import Settings
from layerfleet.database import Base, create_engine, migrate, utcnow
from layerfleet.fleet import service as fleet
from layerfleet.fleet.models import Printer
from layerfleet.media import media_root
from layerfleet.prints.models import Print, PrintShotFeedback

POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
_GIVEN_POSTGRES_URL = os.environ.get("LAYERFLEET_TEST_POSTGRES_URL")
POSTGRES_URL = _GIVEN_POSTGRES_URL or f"{POSTGRES_SERVER}/layerfleet_test_{os.getpid()}_{secrets.token_hex(3)}"


def local_port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _backends() -> list[str]:
    if local_port_answers(5432):
        return ["sqlite", "postgresql"]
    if os.environ.get("CI"):
        raise RuntimeError("PostgreSQL at 127.0.0.1:5432 does not answer; CI must test on it")
    return ["sqlite"]


BACKENDS = _backends()


async def _create_or_drop_own_database(create: bool) -> None:
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", pooled=False).execution_options(isolation_level="AUTOCOMMIT")
    name = POSTGRES_URL.rsplit("/", 1)[1]
    async with admin.connect() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await conn.execute(text(f"DROP DATABASE IF EXISTS {name}_migrations WITH (FORCE)"))
        if create:
            await conn.execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()


_own_database_created = False


async def _reset_postgres(url: str) -> None:
    global _own_database_created
    if _GIVEN_POSTGRES_URL is None and not _own_database_created:
        await _create_or_drop_own_database(create=True)
        _own_database_created = True
    engine = create_engine(url, pooled=False)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


def fresh_database_url(backend: str, directory: Path) -> str:
    """An empty database migrated to the newest schema."""
    if backend == "postgresql":
        asyncio.run(_reset_postgres(POSTGRES_URL))
        url = POSTGRES_URL
    else:
        url = f"sqlite+aiosqlite:///{directory / 'test.db'}"
    migrate(url)
    return url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_database_url(backend, tmp_path_factory.mktemp(backend))


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # The detector is off unless a test turns it on (tests/test_watching.py): most tests post
    # pictures of "printing" printers without wanting them scored.
    return Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=database_url, secret_key="test-secret",
                    detection_enabled=False)


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    yield application
    await application.state.services.engine.dispose()


@pytest.fixture(autouse=True)
async def _clean_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    yield
    if "app" not in request.fixturenames:
        return
    application = request.getfixturevalue("app")
    async with application.state.services.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            await conn.execute(text("UPDATE printers SET current_print_id = NULL"))
            for table in reversed(Base.metadata.sorted_tables):
                await conn.execute(table.delete())
    bus = application.state.services.command_bus
    if isinstance(bus, InProcessCommandBus):
        bus.unregister_all()
    # Their files too: the next test's organizations get the same ids again, and must not find
    # (or count, as the prints page's disk use does) what an earlier test stored.
    media = media_root(application.state.services.settings.data_dir)
    await asyncio.to_thread(shutil.rmtree, media / "orgs", True)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@dataclass
class Member:
    user: User
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


@dataclass
class FakeAgent:
    """Stands where the agent gateway would: receives what the command bus delivers."""

    received: list[AgentMessage] = field(default_factory=list)

    async def __call__(self, message: AgentMessage) -> None:
        self.received.append(message)


PRINTING = {"state": {"text": "Printing", "flags": {"operational": True, "printing": True, "paused": False}}}
PAUSED = {"state": {"text": "Paused", "flags": {"operational": True, "printing": False, "paused": True}}}
IDLE = {"state": {"text": "Operational", "flags": {"operational": True, "printing": False, "paused": False}}}


class Farm:
    """Builds test data straight through the domain services."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sessionmaker = app.state.services.sessionmaker
        self.bus: InProcessCommandBus = app.state.services.command_bus
        self._count = 0

    async def member(self, role: Role = Role.OWNER, organization: str = "Farm A", dh_balance: float = 10.0) -> Member:
        self._count += 1
        async with self.sessionmaker() as session:
            user = await accounts.create_user(
                session, f"user{self._count}-{role.value}@example.com", "password-123",
                role=role, organization_name=organization, dh_balance=dh_balance,
            )
            user.role = role.value  # the first member of an organization would be its owner
            key = (await accounts.create_api_token(session, user)).key
            await session.commit()
            return Member(user, key)

    async def printer(self, owner: Member, name: str = "MK4", status: dict[str, Any] | None = None,
                      **fields: Any) -> Printer:
        async with self.sessionmaker() as session:
            user = await session.get(User, owner.user.id)
            assert user is not None
            printer = await fleet.create_printer(session, user, name)
            printer.status = status
            for key, value in fields.items():
                setattr(printer, key, value)
            await session.commit()
            return printer

    async def print(self, printer: Printer, *, current: bool = False, feedback: int = 0, **fields: Any) -> Print:
        async with self.sessionmaker() as session:
            print_ = Print(organization_id=printer.organization_id, printer_id=printer.id,
                           filename=fields.pop("filename", "part.gcode"), **fields)
            session.add(print_)
            await session.flush()
            for n in range(feedback):
                image = f"orgs/{printer.organization_id}/f{n}.jpg"
                session.add(PrintShotFeedback(print_id=print_.id, image_path=image))
            if current:
                db_printer = await session.get(Printer, printer.id)
                assert db_printer is not None
                db_printer.current_print_id = print_.id
            await session.commit()
            return print_

    async def connect_agent(self, printer: Printer) -> FakeAgent:
        agent = FakeAgent()
        self.bus.register(printer.id, agent)
        return agent

    async def run(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        async with self.sessionmaker() as session:
            return await work(session)


@pytest.fixture
def farm(app: Any) -> Farm:
    return Farm(app)


def now() -> Any:
    return utcnow()


@pytest.fixture
def live_url(settings: Settings) -> Iterator[str]:
    """The app served by a real Uvicorn on a free port (same database as `farm`)."""
    from live_server import LiveServer

    with LiveServer(settings) as url:
        yield url


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _own_database_created:
        asyncio.run(_create_or_drop_own_database(create=False))


# --- Which real parts the run exercised -----------------------------------------------------------

def _real_parts(item: pytest.Item) -> list[str]:
    module = item.nodeid.split("::", 1)[0]
    fixtures = set(getattr(item, "fixturenames", ()))
    parts = []
    if "postgresql" in item.nodeid:
        parts.append("PostgreSQL")
    if "redis" in item.nodeid.lower() or module.endswith(("test_redis_bus.py", "test_worker.py", "test_deployment.py")):
        parts.append("Redis")
    if "octoprint" in module:
        parts.append("OctoPrint")
    if "moonraker" in module:
        parts.append("Moonraker")
    if item.get_closest_marker("skipif") is not None and any(
            "PrusaSlicer" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
        parts.append("PrusaSlicer")
    if fixtures & {"browser", "page"}:
        parts.append("Chromium")
    if module.endswith("test_deployment.py"):
        parts.append("nginx")
    if "mqtt" in item.nodeid.lower():
        parts.append("Mosquitto")
    if "mailbox" in fixtures:
        parts.append("SMTP server")
    return parts


_part_of: dict[str, list[str]] = {}
_outcomes: Counter[tuple[str, str]] = Counter()
_skip_reasons: dict[str, set[str]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _part_of[item.nodeid] = _real_parts(item)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.skipped or report.failed):
        return
    outcome = "skipped" if report.skipped else "failed" if report.failed else "passed"
    for part in _part_of.get(report.nodeid, []):
        _outcomes[part, outcome] += 1
        if report.skipped and isinstance(report.longrepr, tuple):
            _skip_reasons.setdefault(part, set()).add(str(report.longrepr[2]).removeprefix("Skipped: "))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # pytest-timeout's stack shows only an idle event loop: what a hung test awaits is in its
    # unfinished tasks, so a timed-out test's report carries them.
    report: pytest.TestReport = yield
    if report.failed and call.excinfo is not None and "Timeout" in str(call.excinfo.value):
        stacks = io.StringIO()
        for task in [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]:
            print(task, file=stacks)
            task.print_stack(file=stacks)
        report.sections.append(("asyncio tasks not done at the timeout", stacks.getvalue()))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.section("real parts")
    for part in ("PostgreSQL", "Redis", "OctoPrint", "Moonraker", "PrusaSlicer", "Chromium", "nginx",
                 "Mosquitto", "SMTP server"):
        passed, failed, skipped = (_outcomes[part, o] for o in ("passed", "failed", "skipped"))
        if not passed + failed + skipped:
            line = "not exercised by the tests selected"
            if part == "PostgreSQL" and "postgresql" not in BACKENDS:
                line = "skipped: PostgreSQL does not answer at 127.0.0.1:5432 (scripts/setup-real-parts starts it)"
        else:
            line = f"{passed} passed" + (f", {failed} failed" if failed else "")
            line += f", {skipped} skipped" if skipped else ""
            if skipped:
                line += " — " + "; ".join(sorted(_skip_reasons.get(part, set())))
        terminalreporter.write_line(f"{part:<12} {line}")
