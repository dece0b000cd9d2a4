"""`layerfleet`: the single command line of the server."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from layerfleet import __version__
from layerfleet.config import Settings, load_settings

T = TypeVar("T")


def _with_session(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from layerfleet.database import create_engine, create_sessionmaker

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


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from layerfleet.app import create_app
    from layerfleet.database import create_engine, create_sessionmaker, migrate
    from layerfleet.demo import seed

    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_migrate:
        migrate(settings.effective_database_url)

    async def first_start() -> Any:
        engine = create_engine(settings.effective_database_url, pooled=False)
        try:
            return await seed(settings, create_sessionmaker(engine), demo_printers=args.demo)
        finally:
            await engine.dispose()

    created = asyncio.run(first_start())
    if created is not None:
        print(
            "\n  First start: an admin account was created.\n"
            f"    email:    {created.email}\n    password: {created.password}\n"
            f"  (kept in {created.credentials_file}; change it after signing in)\n",
            flush=True,
        )
    print(f"  Layerfleet {__version__} on http://{settings.host}:{settings.port}/  (API docs: /docs)\n", flush=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port,
        log_level=settings.log_level, proxy_headers=True,
    )
    return 0


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


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from layerfleet.accounts import service as accounts

    async def create(session: Any) -> str | None:
        user = await accounts.get_user_by_email(session, args.email)
        if user is None:
            return None
        return (await accounts.create_api_token(session, user, args.name)).key

    try:
        key = _with_session(settings, create)
    except accounts.AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if key is None:
        print(f"error: no user with email {args.email}", file=sys.stderr)
        return 1
    print(key)
    return 0


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
        print(f"{'score':>6} {'p':>6} {'boxes':>5}  path")
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
                    print(f"{'-':>6} {'-':>6} {'-':>5}  {path}: {result}", flush=True)
            elif isinstance(result, FrameResult):
                if args.json:
                    print(json.dumps({"path": str(path), **result.as_json()}), flush=True)
                else:
                    print(f"{result.score:6.3f} {result.p:6.2f} {len(result.boxes):5d}  {path}", flush=True)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerfleet", description="Layerfleet print-farm server")
    parser.add_argument("--version", action="version", version=f"layerfleet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="migrate the database and run the server")
    serve.add_argument("--host", help="address to listen on (LAYERFLEET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LAYERFLEET_PORT, default 8000)")
    serve.add_argument("--demo", action="store_true", help="add a few demo printers on first start")
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

    detect = commands.add_parser(
        "detect", help="score pictures with the failure detector",
        description="Score pictures (files or folders) with the shipped failure detector. "
        "score is the probability that the picture shows a print failure (alert at 0.5); "
        "p is the sum of box confidences; boxes are [xc, yc, w, h, confidence] in pixels.",
    )
    detect.add_argument("paths", nargs="+", metavar="PATH")
    detect.add_argument("--json", action="store_true", help="one JSON object per line, per image")
    detect.add_argument("--model", type=Path, help="ONNX model (default: LAYERFLEET_MODEL_PATH or the shipped one)")
    detect.set_defaults(handler=cmd_detect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    handler: Callable[[argparse.Namespace, Settings], int] = args.handler
    return handler(args, settings)
