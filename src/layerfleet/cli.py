"""`layerfleet`: the single command line of the server."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from layerfleet import __version__
from layerfleet.config import Settings, load_settings

T = TypeVar("T")
# Seconds a stopping server waits for open requests (live pages' event streams never end).
SHUTDOWN_GRACE_SECONDS = 5


def _with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from layerfleet.database import create_engine, create_sessionmaker, migrate

    # A command may be the first thing run on a new data directory: the schema must be there.
    migrate(settings.effective_database_url)

    async def run() -> T:
        engine = create_engine(settings.effective_database_url, pooled=False)
        try:
            async with create_sessionmaker(engine)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.database import migrate

    migrate(settings.effective_database_url)
    print("database is up to date")
    return 0


# Where `simulate` takes its API token from when no file names it (kept out of the command line).
TOKEN_VARIABLE = "LAYERFLEET_TOKEN"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from layerfleet.app import create_app
    from layerfleet.database import create_engine, create_sessionmaker, migrate
    from layerfleet.demo import demo_simulator_token, seed
    from layerfleet.serving import server_config

    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if args.demo and "LAYERFLEET_DETECTION_INTERVAL_SECONDS" not in os.environ:
        from layerfleet.demo import DEMO_DETECTION_INTERVAL

        # The detector holds its fire for a print's first 30 frames; at the usual 10 s a
        # visitor would wait five minutes to see it pause the failing demo printer.
        settings.detection_interval_seconds = DEMO_DETECTION_INTERVAL
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_migrate:
        migrate(settings.effective_database_url)

    async def first_start() -> tuple[Any, str | None]:
        engine = create_engine(settings.effective_database_url, pooled=False)
        try:
            created = await seed(settings, create_sessionmaker(engine))
            token = await demo_simulator_token(settings, create_sessionmaker(engine)) if args.demo else None
            return created, token
        finally:
            await engine.dispose()

    created, demo_token = asyncio.run(first_start())
    if created is not None:
        print(
            "\n  First start: an admin account was created.\n"
            f"    email:    {created.email}\n    password: {created.password}\n"
            f"  (kept in {created.credentials_file}; change it after signing in)\n",
            flush=True,
        )
    print(f"  Layerfleet {__version__} on http://{settings.host}:{settings.port}/  (API docs: /docs)\n", flush=True)
    simulator = _start_demo_simulator(settings, demo_token) if demo_token else None
    try:
        uvicorn.Server(server_config(
            create_app(settings), settings, host=settings.host, port=settings.port, log_level=settings.log_level,
            # Live pages hold their event streams open; they reconnect to the next server.
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )).run()
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(timeout=15)
    return 0


def demo_simulator_command(settings: Settings, token: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of the demo's simulator. The API token goes in the
    environment: a command line is visible to every user of the machine (`ps`)."""
    from layerfleet.demo import DEMO_DETECTION_INTERVAL, DEMO_FAIL_RATE, DEMO_PRINTERS

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    command = [
        sys.executable, "-m", "layerfleet", "simulate", "--server", f"http://{host}:{settings.port}",
        "--printers", str(DEMO_PRINTERS), "--fail-rate", str(DEMO_FAIL_RATE),
        "--fail-first", "1", "--picture-interval", str(DEMO_DETECTION_INTERVAL), "--preheated",
        "--print-minutes", "10-30", "--name", "Demo printer",
        "--state", str(settings.data_dir / "simulated-printers.json"), "--stop-with-pid", str(os.getpid()),
    ]
    return command, {**os.environ, "LAYERFLEET_LOG_LEVEL": "warning", TOKEN_VARIABLE: token}


def _start_demo_simulator(settings: Settings, token: str) -> Any:
    """`layerfleet simulate` beside the server, so the demo shows live printers (the first
    printer's first print fails within minutes, then one print in three); it waits for the
    server, and stops with it."""
    import subprocess

    from layerfleet.demo import DEMO_PRINTERS

    command, environment = demo_simulator_command(settings, token)
    print(f"  --demo: {DEMO_PRINTERS} simulated printers are linking (layerfleet simulate)\n", flush=True)
    return subprocess.Popen(command, env=environment)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Background jobs (slicing) without the web server: scale-out over Redis."""
    from layerfleet.database import create_engine, create_sessionmaker, migrate
    from layerfleet.jobs import create_job_queue
    from layerfleet.library.slice_jobs import SliceJobs

    if not settings.redis_url:
        print("error: `layerfleet worker` takes jobs from Redis: set LAYERFLEET_REDIS_URL (without it the "
              "server runs its jobs itself)", file=sys.stderr)
        return 2
    migrate(settings.effective_database_url)

    async def work(stop: asyncio.Event) -> int:
        from layerfleet.app import timelapse_jobs

        engine = create_engine(settings.effective_database_url)
        slicing = SliceJobs(create_sessionmaker(engine), create_job_queue(settings), settings.data_dir,
                                 workers=args.jobs, sole_worker=False, timeout=settings.slice_timeout_seconds)
        # Timelapse videos and uploaded timelapses too, on their own queue.
        videos = timelapse_jobs(settings, create_sessionmaker(engine), workers=args.jobs, sole_worker=False)
        # Fine-tuning the detector per organization (needs the `train` extra here), on a queue of its own.
        from layerfleet.app import finetune_jobs

        finetuning = finetune_jobs(settings, create_sessionmaker(engine), workers=args.jobs, sole_worker=False)
        # Notifications too: deliveries are claimed row by row, so servers and workers share them.
        from layerfleet.notifications.delivery import Notifier

        notifier = Notifier(create_sessionmaker(engine), settings, sole_worker=False) \
            if settings.notification_workers else None
        from layerfleet.app import watching_scorer

        scorer = watching_scorer(settings, create_sessionmaker(engine)) \
            if settings.scoring_on_workers and settings.detection_enabled else None
        metrics_port = args.metrics_port or settings.worker_metrics_port
        if metrics_port:
            from layerfleet import metrics

            metrics.serve_on_port(metrics_port, settings.worker_metrics_host)
        await slicing.start()
        await videos.start()
        await finetuning.start()
        if notifier is not None:
            await notifier.start()
        if scorer is not None:
            await scorer.start()
        print(f"  worker running {args.jobs} job(s) at a time from {settings.redis_url}"
              f"{', and scoring frames' if scorer else ''}; Ctrl-C stops it", flush=True)
        try:
            await stop.wait()
        finally:
            if scorer is not None:
                await scorer.close()
            if notifier is not None:
                await notifier.close()
            await slicing.close()
            await videos.close()
            await finetuning.close()
            await engine.dispose()
        return 0

    return _run_until_signalled(work)


def cmd_createuser(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.accounts import service as accounts
    from layerfleet.accounts.models import Role
    from layerfleet.database import migrate

    password = args.password
    generated = False
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
        else:
            password, generated = secrets.token_urlsafe(12), True
    role = Role.ADMIN if args.admin else Role(args.role)
    migrate(settings.effective_database_url)

    async def create(session: Any) -> Any:
        return await accounts.create_user(
            session, args.email, password, role=role, organization_name=args.organization,
            dh_balance=settings.initial_detection_hours,
        )

    try:
        user = _with_session(settings, create)
    except accounts.AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"created {user.email} ({user.role}) in organization '{user.organization.name}'")
    if generated:
        print(f"password: {password}")
    return 0


def _print_for_user(settings: Settings, email: str, make: Callable[[Any, Any], Awaitable[str]],
                    errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``make(session, user)`` for the user with ``email`` and print what it returns (a key)."""
    from layerfleet.accounts import service as accounts

    async def work(session: Any) -> str | None:
        user = await accounts.get_user_by_email(session, email)
        return None if user is None else await make(session, user)

    refusals: tuple[type[Exception], ...] = (accounts.AccountError, *errors)
    try:
        printed = _with_session(settings, work)
    except refusals as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if printed is None:
        print(f"error: no user with email {email}", file=sys.stderr)
        return 1
    print(printed)
    return 0


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.accounts import service as accounts

    async def create(session: Any, user: Any) -> str:
        return (await accounts.create_api_token(session, user, args.name)).key

    return _print_for_user(settings, args.email, create)


def cmd_accesskey_create(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.accounts import service as accounts

    async def create(session: Any, user: Any) -> str:
        issued = await accounts.create_access_key(session, user, args.name)
        return f"{issued.access_key} {issued.secret}"

    return _print_for_user(settings, args.email, create)


def cmd_printwatch_key_create(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.printwatch import api_keys

    async def create(session: Any, user: Any) -> str:
        return (await api_keys.issue_key(session, user, args.devices, args.name)).plain

    return _print_for_user(settings, args.email, create, (api_keys.PrintWatchKeyError,))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DETECT_BATCH = 8


def _image_paths(paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            found.append(path)
    return found


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from layerfleet.detection import BadImage, Detector, FrameResult, ModelMissing

    try:
        detector = Detector(args.model)
    except ModelMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = _image_paths(args.paths)
    failures = 0
    if not args.json:
        print(f"{'score':>6} {'p':>6} {'boxes':>5} {'defect':>6}  path")
    for start in range(0, len(paths), DETECT_BATCH):
        chunk = paths[start:start + DETECT_BATCH]
        readable: dict[Path, bytes] = {}
        results: dict[Path, object] = {}
        for path in chunk:
            try:
                readable[path] = path.read_bytes()
            except OSError as exc:
                results[path] = BadImage(f"cannot read the file: {exc.strerror}")
        results.update(zip(readable, detector.detect(list(readable.values())), strict=True))
        for path in chunk:
            result = results[path]
            if isinstance(result, BadImage):
                failures += 1
                if args.json:
                    print(json.dumps({"path": str(path), "error": str(result)}), flush=True)
                else:
                    print(f"{'-':>6} {'-':>6} {'-':>5} {'-':>6}  {path}: {result}", flush=True)
            elif isinstance(result, FrameResult):
                if args.json:
                    print(json.dumps({"path": str(path), **result.as_json()}), flush=True)
                else:
                    # "-": the model has no quality-defect output.
                    defect = "-" if result.defect_score is None else f"{result.defect_score:.3f}"
                    print(f"{result.score:6.3f} {result.p:6.2f} {len(result.boxes):5d} {defect:>6}  {path}", flush=True)
    return 1 if failures else 0


def cmd_hours_grant(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.accounts import service as accounts

    async def grant(session: Any) -> float | None:
        user = await accounts.get_user_by_email(session, args.email)
        if user is None:
            return None
        user.dh_balance += args.hours
        return float(user.dh_balance)

    balance = _with_session(settings, grant)
    if balance is None:
        print(f"error: no user with email {args.email}", file=sys.stderr)
        return 1
    print(f"{args.email}: {balance:.2f} AI detection hours")
    return 0


async def _organization_id(session: Any, given: str | None) -> int:
    """An organization named by id or name; the only one when none is given (else SystemExit)."""
    from sqlalchemy import select

    from layerfleet.accounts.models import Organization

    organizations = list((await session.execute(select(Organization).order_by(Organization.id))).scalars())
    if given is None:
        if len(organizations) == 1:
            return int(organizations[0].id)
        names = ", ".join(f"{o.id} ({o.name})" for o in organizations) or "none yet"
        raise SystemExit(f"error: name the organization with --organization ID|NAME: {names}")
    matches = [o for o in organizations if str(o.id) == given or o.name == given]
    if len(matches) != 1:
        raise SystemExit(f"error: {'no' if not matches else 'more than one'} organization {given!r}")
    return int(matches[0].id)


def cmd_model_finetune(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.errors import DomainError
    from layerfleet.finetuning import service
    from layerfleet.finetuning.jobs import training_available

    if args.wait:
        missing = training_available()
        if missing:
            print(f"error: {missing}", file=sys.stderr)
            return 1

    async def start(session: Any) -> tuple[int, str]:
        from layerfleet.database import utcnow

        organization_id = await _organization_id(session, args.organization)
        version = await service.start(session, organization_id, settings.data_dir)
        if args.wait:
            version.enqueued_at = utcnow()  # this command runs it: no server's poller hands it over
        return organization_id, version.uuid

    try:
        organization_id, version_uuid = _with_session(settings, start)
    except DomainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.wait:
        print(f"fine-tuning {version_uuid} of organization {organization_id} queued: the server (or a "
              "`layerfleet worker`) runs it; `layerfleet model list` shows its figures")
        return 0
    print(f"fine-tuning {version_uuid} of organization {organization_id} here (this takes a while)...", flush=True)

    async def run() -> Any:
        from layerfleet.database import create_engine, create_sessionmaker
        from layerfleet.finetuning.jobs import FinetuneRunner
        from layerfleet.finetuning.service import version_of

        engine = create_engine(settings.effective_database_url, pooled=False)
        try:
            sessions = create_sessionmaker(engine)
            await FinetuneRunner(sessions, settings)(version_uuid)
            async with sessions() as session:
                return await version_of(session, organization_id, version_uuid)
        finally:
            await engine.dispose()

    version = asyncio.run(run())
    print(_describe_version(version))
    return 0 if version.status in ("promoted", "rejected") else 1


def _describe_version(version: Any) -> str:
    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    return (f"{version.uuid}  {version.status:11s}  val AUROC {figure(version.val_auroc)} "
            f"(shipped {figure(version.val_auroc_shipped)})  held-back AUROC {figure(version.heldout_auroc)} "
            f"(shipped {figure(version.heldout_auroc_shipped)})  {version.decision or version.error or ''}")


def cmd_model_list(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.finetuning import service

    async def listing(session: Any) -> list[str]:
        organization_id = await _organization_id(session, args.organization)
        in_use = await service.current(session, organization_id)
        lines = [f"organization {organization_id} uses "
                 + (f"fine-tuned model {in_use.uuid}" if in_use else "the shipped model")]
        lines += [_describe_version(v) for v in await service.versions(session, organization_id)]
        return lines

    print("\n".join(_with_session(settings, listing)))
    return 0


def cmd_model_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.errors import DomainError
    from layerfleet.finetuning import service

    async def rollback(session: Any) -> str:
        organization_id = await _organization_id(session, args.organization)
        previous = await service.rollback(session, organization_id)
        return f"organization {organization_id} now uses " + (
            f"fine-tuned model {previous.uuid}" if previous else "the shipped model")

    try:
        print(_with_session(settings, rollback))
    except DomainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _hours(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, not {text!r}") from None
    if not math.isfinite(value) or abs(value) > 1_000_000:
        raise argparse.ArgumentTypeError("hours must be a finite number up to a million")
    return value


AGENT_EXIT_CODES = {"REQUESTED": 0, "UNAUTHORIZED": 2, "DUPLICATE": 3}


async def _stop_when_gone(pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once process ``pid`` has exited. Uvicorn re-raises the SIGTERM it caught
    after its shutdown, so `serve --demo` may die before it can stop its simulator itself."""

    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass  # it exists, under another user
        await asyncio.sleep(1.0)


def _run_until_signalled(work: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``work`` with an event that SIGINT / SIGTERM set, so agents stop cleanly."""
    import signal

    async def main() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        return await work(stop)

    return asyncio.run(main())


def cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from layerfleet.printer_agent.camera import NamedCamera, camera_at
    from layerfleet.printer_agent.config import AgentConfig, ConfigError
    from layerfleet.printer_agent.connector import Connector
    from layerfleet.printer_agent.runner import AgentRunner
    from layerfleet.simulator.farm import LinkError

    try:
        config = AgentConfig.from_file(args.config) if args.config else AgentConfig()
        config = config.overridden(
            server=args.server, token=args.token, octoprint_url=args.octoprint,
            octoprint_api_key=args.octoprint_api_key, moonraker_url=args.moonraker,
            moonraker_api_key=args.moonraker_api_key, snapshot_url=args.snapshot_url,
            stream_url=args.stream_url, name=args.name,
        )
        config.validate(need_token=args.code is None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    assert config.server is not None
    if args.code is not None:
        try:
            config.token = asyncio.run(_verify_code(config.server, args.code, config.name))
        except (LinkError, httpx.HTTPError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"linked; the printer token is {config.token}\n"
              "  put it in the config file (token = \"…\") or pass --token next time", flush=True)
    assert config.token is not None
    connector: Connector
    try:
        if config.octoprint_url:
            from layerfleet.printer_agent.octoprint import OctoPrintConnector

            connector = OctoPrintConnector(config.octoprint_url, config.octoprint_api_key or "")
        else:
            from layerfleet.printer_agent.moonraker import MoonrakerConnector

            assert config.moonraker_url is not None
            connector = MoonrakerConnector(config.moonraker_url, api_key=config.moonraker_api_key)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    camera = camera_at(config.snapshot_url, config.stream_url)
    others = [NamedCamera(c.name, found, c.nozzle) for c in config.cameras
              if (found := camera_at(c.snapshot_url, c.stream_url)) is not None]
    runner = AgentRunner(config.server, config.token, connector, camera, cameras=others,
                         label=config.name or connector.kind)

    async def work(stop: asyncio.Event) -> str:
        stopper = asyncio.create_task(stop.wait())
        stopper.add_done_callback(lambda _: runner.stop())
        result = await runner.run()
        stopper.cancel()
        return result.name

    outcome = _run_until_signalled(work)
    if outcome != "REQUESTED":
        print(f"agent stopped: {outcome.lower()}", file=sys.stderr)
    return AGENT_EXIT_CODES[outcome]


async def _verify_code(server: str, code: str, name: str | None) -> str:
    import httpx

    from layerfleet.simulator.farm import LinkError

    async with httpx.AsyncClient(base_url=server.rstrip("/"), timeout=30) as client:
        answer = await client.post("/api/v1/octo/verify/", params={"code": code}, json={"name": name} if name else {})
    if not answer.is_success:
        detail = answer.json().get("detail", answer.text[:200]) if answer.headers.get(
            "content-type", "").startswith("application/json") else answer.text[:200]
        raise LinkError(f"the server did not accept code {code}: {answer.status_code} {detail}")
    token: str = answer.json()["printer"]["auth_token"]
    return token


def _minutes_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        values = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX minutes, like 20-60, not {text!r}") from None
    if not 0 < values[0] <= values[1]:
        raise argparse.ArgumentTypeError("minutes must be positive and MIN ≤ MAX")
    return values


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, not {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("the fail rate is a share of prints, from 0 to 1")
    return value


def _camera_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4:
        raise argparse.ArgumentTypeError(f"cameras per printer are 1 to 4, not {text!r}")
    return int(text)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from layerfleet.printer_agent.runner import Cadence, Stopped
    from layerfleet.simulator.farm import LinkError, TokenStore, describe, link_printers, run_farm
    from layerfleet.simulator.printer import SimulationOptions

    low, high = args.print_minutes
    options = SimulationOptions(speed=args.speed, fail_rate=args.fail_rate, min_print_minutes=low,
                                max_print_minutes=high, first_print_preheated=args.preheated)
    store = TokenStore(args.state or settings.data_dir / "simulated-printers.json")
    try:
        from_file = args.token_file.read_text().strip() if args.token_file else None
        token = args.token or from_file or os.environ.get(TOKEN_VARIABLE)
    except OSError as exc:
        print(f"error: cannot read the token file: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"error: give an admin's API token: {TOKEN_VARIABLE}, --token-file or --token", file=sys.stderr)
        return 2

    async def work(stop: asyncio.Event) -> int:
        watchers: set[asyncio.Task[None]] = set()  # held: a task nobody references may be collected
        if args.stop_with_pid is not None:
            watchers.add(asyncio.create_task(_stop_when_gone(args.stop_with_pid, stop)))
        linking = asyncio.create_task(link_printers(args.server, token, args.printers, store,
                                                    prefix=args.name))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({linking, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not linking.done():
            linking.cancel()  # stopped while still linking (the server may not be up yet)
            return 0
        try:
            links = linking.result()
        except (LinkError, httpx.HTTPError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"  {len(links)} simulated printer(s) on {args.server}; Ctrl-C stops them", flush=True)
        cadence = Cadence(watched_picture=args.picture_interval)
        results = await run_farm(args.server, links, options, cadence=cadence, seed=args.seed, stop=stop,
                                 failing_first=args.fail_first, cameras=args.cameras)
        if all(result is Stopped.REQUESTED for result in results):
            print(f"  simulator stopped ({len(results)} printers)", flush=True)
        else:
            print(f"simulator stopped: {describe(results)}", flush=True)
        return 0

    return _run_until_signalled(work)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerfleet", description="Layerfleet print-farm server")
    parser.add_argument("--version", action="version", version=f"layerfleet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker", help="run background jobs (slicing, timelapses) taken from Redis, beside the servers",
        description="Scale-out: with LAYERFLEET_REDIS_URL set, servers queue their jobs in Redis and any "
        "number of workers run them (set LAYERFLEET_JOB_WORKERS=0 on the servers to leave all jobs to the "
        "workers). A job whose worker dies is taken over by another. All processes need the same data "
        "directory (LAYERFLEET_DATA_DIR on shared storage) and database.",
    )
    worker.add_argument("--jobs", type=int, default=1, metavar="N", help="jobs run at once (default 1)")
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve this worker's Prometheus metrics on 127.0.0.1:PORT "
                             "(default: LAYERFLEET_WORKER_METRICS_PORT, else none)")
    worker.set_defaults(handler=cmd_worker)

    serve = commands.add_parser("serve", help="migrate the database and run the server")
    serve.add_argument("--host", help="address to listen on (LAYERFLEET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LAYERFLEET_PORT, default 8000)")
    serve.add_argument("--demo", action="store_true", help="also run three simulated printers linked to this server")
    serve.add_argument("--no-migrate", action="store_true", help="do not run migrations before starting")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(handler=cmd_migrate)

    createuser = commands.add_parser("createuser", help="create a user account")
    createuser.add_argument("email")
    createuser.add_argument("--password", help="prompted for when omitted on a terminal, else generated")
    createuser.add_argument("--admin", action="store_true", help="give the user the admin role")
    createuser.add_argument("--role", default="operator", choices=["viewer", "operator", "admin", "owner"])
    createuser.add_argument("--organization", help="organization to join (created if missing)")
    createuser.set_defaults(handler=cmd_createuser)

    token = commands.add_parser("token", help="personal API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    token_create = token_commands.add_parser("create", help="print a new API token for a user")
    token_create.add_argument("email")
    token_create.add_argument("--name", default="cli", help="a label to recognise the token by")
    token_create.set_defaults(handler=cmd_token_create)

    accesskey = commands.add_parser(
        "accesskey", help="access keys of the print-farm API (/api/v3, HTTP Basic)",
        description="Access key / secret key pairs for the Eiger-compatible print-farm API: use them as "
        "the user name and password of HTTP Basic auth.",
    )
    accesskey_commands = accesskey.add_subparsers(dest="accesskey_command", required=True, metavar="ACTION")
    accesskey_create = accesskey_commands.add_parser(
        "create", help="print ACCESS_KEY SECRET_KEY for a user (the secret is shown once; only its hash is stored)")
    accesskey_create.add_argument("email")
    accesskey_create.add_argument("--name", default="cli", help="a label to recognise the key by")
    accesskey_create.set_defaults(handler=cmd_accesskey_create)

    printwatch_key = commands.add_parser(
        "printwatch-key", help="API keys of the PrintWatch inference API",
        description="Keys for PrintWatch clients (the OctoPrint plugin, the Klipper client) pointed at this "
        "server. Each key serves up to --devices printers (printer_ids); more answer 212.",
    )
    printwatch_key_commands = printwatch_key.add_subparsers(dest="printwatch_key_command", required=True,
                                                            metavar="ACTION")
    printwatch_key_create = printwatch_key_commands.add_parser(
        "create", help="print a new PrintWatch API key for a user (shown once; only its hash is stored)")
    printwatch_key_create.add_argument("email")
    printwatch_key_create.add_argument("--devices", type=int, default=1, metavar="N",
                                       help="how many printers the key serves (default 1)")
    printwatch_key_create.add_argument("--name", default="cli", help="a label to recognise the key by")
    printwatch_key_create.set_defaults(handler=cmd_printwatch_key_create)

    hours = commands.add_parser(
        "hours", help="AI detection hours (dh_balance)",
        description="Watched printing time uses up a user's AI detection hours; at 0 the detector stops "
        "watching their printers. Self-hosters can set LAYERFLEET_UNLIMITED_DETECTION_HOURS=true instead.",
    )
    hours_commands = hours.add_subparsers(dest="hours_command", required=True, metavar="ACTION")
    hours_grant = hours_commands.add_parser("grant", help="add hours to a user's balance (negative to take)")
    hours_grant.add_argument("email")
    hours_grant.add_argument("hours", type=_hours)
    hours_grant.set_defaults(handler=cmd_hours_grant)

    model = commands.add_parser(
        "model", help="the detector's fine-tuned models per organization",
        description="Fine-tune the shipped detector on an organization's own evidence (feedback answers, "
        "muted alerts, resumed pauses, confirmed failures), list the versions with their figures, roll back. "
        "Fine-tuning needs the `train` extra where it runs.")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    model_finetune = model_commands.add_parser(
        "finetune", help="start a fine-tuning job (the server or a worker runs it; --wait runs it here)")
    model_finetune.add_argument("--organization", metavar="ID|NAME", help="default: the only organization")
    model_finetune.add_argument("--wait", action="store_true", help="run the job in this process and print its result")
    model_finetune.set_defaults(handler=cmd_model_finetune)
    model_list = model_commands.add_parser("list", help="the organization's model versions and the one in use")
    model_list.add_argument("--organization", metavar="ID|NAME")
    model_list.set_defaults(handler=cmd_model_list)
    model_rollback = model_commands.add_parser("rollback", help="return to the model used before the current one")
    model_rollback.add_argument("--organization", metavar="ID|NAME")
    model_rollback.set_defaults(handler=cmd_model_rollback)

    detect = commands.add_parser(
        "detect", help="score pictures with the failure detector",
        description="Score pictures (files or folders) with the shipped failure detector. "
        "score is the probability that the picture shows a print failure (alert at 0.5); "
        "p is the sum of box confidences; boxes are [xc, yc, w, h, confidence] in pixels; "
        "defect_score / defect_boxes are the same for print-quality defects (null / - when the model "
        "has no defect output).",
    )
    detect.add_argument("paths", nargs="+", metavar="PATH")
    detect.add_argument("--json", action="store_true", help="one JSON object per line, per image")
    detect.add_argument("--model", type=Path, help="ONNX model (default: LAYERFLEET_MODEL_PATH or the shipped one)")
    detect.set_defaults(handler=cmd_detect)

    from layerfleet.printer_agent.config import EXAMPLE as AGENT_CONFIG_EXAMPLE

    agent = commands.add_parser(
        "agent", help="run the printer agent for an OctoPrint or Moonraker printer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Connect one printer (through OctoPrint or Moonraker) to a Layerfleet server, or any "
        "server that speaks the Obico agent protocol. It reports status and print events, posts webcam "
        "pictures for failure detection, and carries out pause / resume / cancel. It reconnects with "
        "backoff and keeps print events while the server is away.\n\n"
        "Link once with a 6-digit code from the server (Printers → Link a printer):\n"
        "  layerfleet agent --server URL --code 123456 --octoprint http://127.0.0.1:5000 --octoprint-api-key KEY\n"
        "then run with the printer token it prints (--token) or a config file (--config):\n\n"
        + AGENT_CONFIG_EXAMPLE,
        epilog="Exit codes: 0 stopped, 2 configuration or token refused, 3 another agent uses the token.",
    )
    agent.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    agent.add_argument("--server", help="server base URL, e.g. https://farm.example.com")
    agent.add_argument("--token", help="the printer token (from linking)")
    agent.add_argument("--code", help="link with this 6-digit one-time code and print the token")
    agent.add_argument("--octoprint", metavar="URL", help="OctoPrint base URL, e.g. http://127.0.0.1:5000")
    agent.add_argument("--octoprint-api-key", metavar="KEY", help="an OctoPrint application or user API key")
    agent.add_argument("--moonraker", metavar="URL", help="Moonraker base URL, e.g. http://127.0.0.1:7125")
    agent.add_argument("--moonraker-api-key", metavar="KEY", help="Moonraker API key, when it requires one")
    agent.add_argument("--snapshot-url", metavar="URL", help="webcam snapshot URL (default: the host's webcam)")
    agent.add_argument("--stream-url", metavar="URL", help="MJPEG stream URL to grab frames from")
    agent.add_argument("--name", help="a label for the logs, and the printer's name when linking")
    agent.set_defaults(handler=cmd_agent)

    simulate = commands.add_parser(
        "simulate", help="run simulated printers linked to a server",
        description="Simulated printers that link to SERVER like real ones (one-time code, own printer "
        "token) and heat, print, pause, resume and cancel, with webcam pictures of a growing part. "
        "With --fail-rate some prints turn to spaghetti part-way. Printer tokens are kept in --state, "
        "so a second run brings back the same printers.",
    )
    simulate.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    simulate.add_argument("--token-file", type=Path, metavar="PATH",
                          help="file holding the API token of an admin (`layerfleet token create`); "
                          f"or set {TOKEN_VARIABLE}")
    simulate.add_argument("--token", help="the API token itself (visible to other users in `ps`: prefer the above)")
    simulate.add_argument("--printers", type=int, default=3, help="how many printers (default 3)")
    simulate.add_argument("--fail-rate", type=_fraction, default=0.0, help="share of prints that fail, 0–1")
    simulate.add_argument("--fail-first", type=int, default=0, metavar="N",
                          help="the first print of the first N printers fails early (a demo of the detector)")
    simulate.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second (default 1)")
    simulate.add_argument("--preheated", action="store_true",
                          help="each printer's first print starts at temperature, without heating up first")
    simulate.add_argument("--print-minutes", type=_minutes_range, default=(20.0, 60.0), metavar="MIN-MAX",
                          help="print length range in simulated minutes (default 20-60)")
    simulate.add_argument("--picture-interval", type=float, default=10.0, metavar="SECONDS",
                          help="seconds between webcam pictures while printing and watched (default 10, as "
                          "real agents)")
    simulate.add_argument("--cameras", type=_camera_count, default=1, metavar="N",
                          help="cameras per printer, 1–4 (default 1): the main one and side views named "
                          "side-1… that the detector watches too")
    simulate.add_argument("--name", default="Simulated printer", help="printer name prefix")
    simulate.add_argument("--state", type=Path, help="token file (default: DATA_DIR/simulated-printers.json)")
    simulate.add_argument("--seed", type=int, help="random seed, for repeatable runs")
    simulate.add_argument("--stop-with-pid", type=int, metavar="PID",
                          help="stop when process PID is gone (`serve --demo` runs its simulator so)")
    simulate.set_defaults(handler=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # A line per HTTP request (agents poll, post pictures) drowns what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    return handler(args, settings)
