"""The delivery loop: sends due deliveries off the request path, in this process and in any
``layerfleet worker`` beside it.

- Rows are claimed with a conditional UPDATE (a claim token and a lease), so two processes
  never send the same delivery; a process that dies leaves its claims to expire (a sole
  process releases them at start), and what it had not sent is sent then: at least once,
  with the event's idempotency key; a delivery marked sent is never sent again.
- One task per target, at most ``notification_concurrency`` sending at once, each send in a
  thread under a timeout: a slow or dead service delays only its own target.
- Failures are retried with exponential backoff for ``notification_retry_hours``, then failed.
- Quiet hours hold non-critical events; a burst (more than ``notification_digest_threshold``
  events for one target within ``notification_digest_window_seconds``) is held to the
  window's end and sent as one digest; at most ``notification_rate_per_minute`` messages per
  target (failure alerts always go at once).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from layerfleet.config import Settings
from layerfleet.database import utcnow
from layerfleet.media import media_root
from layerfleet.notifications import action_links, channels, messages, outbox, secrets
from layerfleet.notifications.action_links import IssuedLink, LinkAction
from layerfleet.notifications.models import (
    CRITICAL_EVENTS,
    ActionLink,
    Delivery,
    DeliveryStatus,
    NotificationEvent,
    NotificationTarget,
    OutboxEvent,
)
from layerfleet.notifications.quiet_hours import quiet_until
from layerfleet.pacing import woken_within

log = logging.getLogger(__name__)

CLAIM_BATCH = 1000
MAX_BACKOFF_SECONDS = 3600.0
RATE_WINDOW = timedelta(minutes=1)
PRUNE_EVERY_SECONDS = 3600.0
OPEN_STATUSES = (DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value)
ALERT_EVENTS = (NotificationEvent.FAILURE_ALERT.value, NotificationEvent.FAILURE_WARNING.value)
# Events whose message carries the frame with its boxes.
PICTURE_EVENTS = (*ALERT_EVENTS, NotificationEvent.QUALITY_WARNING.value)


@dataclass(frozen=True)
class SendOutcome:
    sent: bool
    error: str | None = None


@dataclass
class _Planned:
    deliveries: list[Delivery]
    events: list[OutboxEvent]
    digest: bool


class Notifier:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *,
                 sole_worker: bool) -> None:
        """``sole_worker``: no other process delivers, so claims found at start are stale."""
        self._sessionmaker = sessionmaker
        self.settings = settings
        self.sole_worker = sole_worker
        self._secret = settings.effective_secret_key
        self._media = media_root(settings.data_dir)
        self._semaphore = asyncio.Semaphore(settings.notification_concurrency)
        self._busy: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._woken: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token = uuid.uuid4().hex

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.notification_send_timeout_seconds * 3 + 60)

    # -- running

    async def start(self) -> None:
        if self.sole_worker:
            released = await self.release_claims()
            if released:
                log.info("%d notification(s) interrupted by the last stop will be sent", released)
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        outbox.add_waker(self.wake)
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        if self._loop is not None and self._woken is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._woken.set)

    async def close(self) -> None:
        outbox.remove_waker(self.wake)
        tasks = [t for t in (self._task, *self._busy.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._task = None

    async def _run(self) -> None:
        assert self._woken is not None
        pruned_at = 0.0
        while True:
            try:
                await self.run_once(wait=False)
                if time.monotonic() - pruned_at > PRUNE_EVERY_SECONDS:
                    pruned_at = time.monotonic()
                    await self.prune()
            except Exception:
                log.exception("the notification loop failed; trying again")
            await woken_within(self._woken, self.settings.notification_poll_seconds)
            self._woken.clear()

    async def release_claims(self) -> int:
        async with self._sessionmaker() as session:
            result = await session.execute(update(Delivery).where(
                Delivery.status.in_(OPEN_STATUSES), Delivery.claimed_until.is_not(None))
                .values(claimed_until=None, claim_token=None).execution_options(synchronize_session=False))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def run_once(self, *, wait: bool = True) -> int:
        """Claim what is due and start sending it (one task per target); with ``wait``, until sent."""
        claimed = await self._claim()
        by_target: dict[int, list[int]] = defaultdict(list)
        for delivery_id, target_id in claimed:
            by_target[target_id].append(delivery_id)
        started = []
        for target_id, ids in by_target.items():
            task = asyncio.create_task(self._serve_target(target_id, ids))
            self._busy[target_id] = task
            task.add_done_callback(self._forget_target(target_id))
            started.append(task)
        if wait and started:
            await asyncio.gather(*started)
        return len(claimed)

    def _forget_target(self, target_id: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._busy.pop(target_id, None)
            self.wake()  # what came for this target while it was busy is due now
        return forget

    async def _claim(self) -> list[tuple[int, int]]:
        now = utcnow()
        due = (Delivery.status.in_(OPEN_STATUSES) & (Delivery.next_attempt_at <= now)
               & (Delivery.claimed_until.is_(None) | (Delivery.claimed_until < now)))
        async with self._sessionmaker() as session:
            query = select(Delivery.id).where(due).order_by(Delivery.id).limit(CLAIM_BATCH)
            if self._busy:
                query = query.where(Delivery.target_id.not_in(list(self._busy)))
            ids = list((await session.execute(query)).scalars())
            if not ids:
                return []
            token = uuid.uuid4().hex
            await session.execute(update(Delivery).where(Delivery.id.in_(ids), due).values(
                claim_token=token, claimed_until=now + self.lease).execution_options(synchronize_session=False))
            await session.commit()
            rows = await session.execute(select(Delivery.id, Delivery.target_id).where(Delivery.claim_token == token))
            return [(int(r[0]), int(r[1])) for r in rows]

    # -- one target

    async def _serve_target(self, target_id: int, delivery_ids: list[int]) -> None:
        claimed = time.monotonic()
        try:
            async with self._semaphore:
                plans = await self._plan(target_id, delivery_ids)
                for plan in plans:
                    # A claim well inside its lease is still ours; an older one is checked (and
                    # renewed) first: it may have run out while this waited, and passed to another.
                    fresh = time.monotonic() - claimed < self.lease.total_seconds() / 2
                    await self._send_planned(target_id, plan, verify=not fresh)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notifications of target %s failed; they will be tried again", target_id)

    async def _plan(self, target_id: int, delivery_ids: list[int]) -> list[_Planned]:
        settings = self.settings
        now = utcnow()
        async with self._sessionmaker() as session:
            target = await session.get(NotificationTarget, target_id)
            rows = list((await session.execute(
                select(Delivery, OutboxEvent).join(OutboxEvent, OutboxEvent.id == Delivery.event_id)
                .where(Delivery.id.in_(delivery_ids)).order_by(Delivery.id))).all())
            if target is None or not target.enabled:
                for delivery, _ in rows:
                    _fail(delivery, "The target was turned off before this could be sent.")
                await session.commit()
                return []
            critical = [(d, e) for d, e in rows if e.kind in CRITICAL_EVENTS]
            rest = [(d, e) for d, e in rows if e.kind not in CRITICAL_EVENTS]
            plans = [_Planned([d], [e], False) for d, e in critical]
            held_until: dict[int, datetime] = {}
            quiet_end = quiet_until(target.quiet_start, target.quiet_end, target.timezone, now)
            if rest and quiet_end is not None:
                held_until.update((d.id, quiet_end) for d, _ in rest)
                rest = []
            if rest:
                window = timedelta(seconds=settings.notification_digest_window_seconds)
                in_window = int((await session.execute(select(func.count(Delivery.id)).where(
                    Delivery.target_id == target_id, Delivery.created_at >= now - window))).scalar_one())
                if any(d.digest for d, _ in rest):
                    # Held for a digest until now: they go together, whatever came since.
                    plans.append(_Planned([d for d, _ in rest], [e for _, e in rest], len(rest) > 1))
                elif in_window <= settings.notification_digest_threshold:
                    plans.extend(_Planned([d], [e], False) for d, e in rest)
                else:
                    last_digest = (await session.execute(select(func.max(Delivery.sent_at)).where(
                        Delivery.target_id == target_id, Delivery.digest.is_(True),
                        Delivery.sent_at >= now - window))).scalar_one()
                    first = (await session.execute(select(func.min(Delivery.created_at)).where(
                        Delivery.target_id == target_id, Delivery.created_at >= now - window))).scalar_one()
                    release = (last_digest or first or now) + window
                    if now >= release:
                        plans.append(_Planned([d for d, _ in rest], [e for _, e in rest], len(rest) > 1))
                    else:
                        held_until.update((d.id, release) for d, _ in rest)
                        for delivery, _ in rest:
                            delivery.digest = True
            # The rate limit counts messages (a digest is one); failure alerts are never held.
            sent_times = sorted(t for t in (await session.execute(
                select(func.max(Delivery.sent_at)).where(
                    Delivery.target_id == target_id, Delivery.sent_at >= now - RATE_WINDOW)
                .group_by(Delivery.message_key))).scalars() if t is not None)
            allowed = settings.notification_rate_per_minute - len(sent_times)
            kept: list[_Planned] = []
            for plan in plans:
                if plan.events[0].kind in CRITICAL_EVENTS or allowed > 0:
                    kept.append(plan)
                    allowed -= 1
                else:
                    free_at = (sent_times[0] if sent_times else now) + RATE_WINDOW
                    held_until.update((d.id, free_at) for d in plan.deliveries)
            for delivery, _ in rows:
                if delivery.id in held_until:
                    delivery.next_attempt_at = held_until[delivery.id]
                    delivery.claimed_until = None
                    delivery.claim_token = None
            await session.commit()
            for plan in kept:
                for event in plan.events:
                    session.expunge(event)
                for delivery in plan.deliveries:
                    session.expunge(delivery)
            return kept

    async def _send_planned(self, target_id: int, plan: _Planned, *, verify: bool) -> None:
        ids = [d.id for d in plan.deliveries]
        tokens = {d.id: d.claim_token for d in plan.deliveries}
        async with self._sessionmaker() as session:
            target = await session.get(NotificationTarget, target_id)
            if target is None:
                return
            if verify:
                result = await session.execute(update(Delivery).where(
                    Delivery.id.in_(ids), Delivery.claim_token.in_(list(set(tokens.values()))),
                    Delivery.status.in_(OPEN_STATUSES)).values(claimed_until=utcnow() + self.lease)
                    .execution_options(synchronize_session=False))
                if getattr(result, "rowcount", 0) != len(ids):
                    await session.rollback()
                    return
            message = await self._message(session, plan)
            if session.new or verify:
                await session.commit()
            credentials = self._credentials(target)
        outcome = credentials if isinstance(credentials, SendOutcome) else \
            await self.send_now(credentials[0], message, credentials[1])
        await self._record(ids, plan, outcome, message.idempotency_key)

    def _credentials(self, target: NotificationTarget) -> tuple[str, str | None] | SendOutcome:
        """The target's URL and webhook secret, or why they cannot be read."""
        try:
            url = secrets.decrypt(self._secret, target.url_encrypted)
            webhook_secret = (secrets.decrypt(self._secret, target.webhook_secret_encrypted)
                              if target.webhook_secret_encrypted else None)
        except ValueError:
            return SendOutcome(False, "The target was saved under another server secret key "
                                      "(LAYERFLEET_SECRET_KEY changed): enter its URL again.")
        return url, webhook_secret

    async def _message(self, session: AsyncSession, plan: _Planned) -> channels.Message:
        if plan.digest:
            key = str(uuid.uuid4())
            return channels.Message(messages.digest_title(len(plan.events)), messages.digest_body(plan.events),
                                    messages.digest_data(key, plan.events), key)
        event = plan.events[0]
        payload = event.payload or {}
        links: list[IssuedLink] = []
        if event.kind in ALERT_EVENTS and event.printer_id is not None:
            wanted = ([LinkAction.RESUME] if payload.get("paused") else []) + [LinkAction.CANCEL, LinkAction.MUTE]
            for action in wanted:
                links.append(await action_links.issue(
                    session, self.settings.public_base_url, organization_id=event.organization_id,
                    printer_id=event.printer_id, print_id=event.print_id, action=action))
        picture_path = payload.get("image_path")
        picture = None
        if isinstance(picture_path, str) and event.kind in PICTURE_EVENTS:
            file = (self._media / picture_path).resolve()
            if file.is_relative_to(self._media.resolve()):
                boxes = payload.get("boxes") if isinstance(payload.get("boxes"), list) else []
                picture = await asyncio.to_thread(channels.load_picture, str(file), boxes or [])
        return channels.Message(
            messages.title_of(event), messages.body_of(event, links), messages.data_of(event, links),
            event.idempotency_key, printer_id=event.printer_id, printer_name=str(payload.get("printer_name") or ""),
            picture=picture)

    async def send_now(self, url: str, message: channels.Message, webhook_secret: str | None) -> SendOutcome:
        """Send in a thread under the timeout; the outcome in words."""
        timeout = self.settings.notification_send_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(channels.send, url, message, webhook_secret=webhook_secret, timeout=timeout)
        except channels.SendFailed as exc:
            return SendOutcome(False, str(exc))
        except TimeoutError:
            return SendOutcome(False, f"The service did not answer within {timeout:g} s.")
        except Exception as exc:  # a service's library failing in its own way must not stop the loop
            log.warning("sending a notification failed", exc_info=True)
            return SendOutcome(False, f"Sending failed: {type(exc).__name__}: {exc}"[:1000])
        return SendOutcome(True)

    async def _record(self, ids: list[int], plan: _Planned, outcome: SendOutcome, message_key: str) -> None:
        now = utcnow()
        created = {e.id: e.created_at for e in plan.events}
        give_up = timedelta(hours=self.settings.notification_retry_hours)
        async with self._sessionmaker() as session:
            if outcome.sent:
                await session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(
                    status=DeliveryStatus.SENT.value, sent_at=now, message_key=message_key, digest=plan.digest,
                    last_error=None, attempts=Delivery.attempts + 1, claimed_until=None, claim_token=None)
                    .execution_options(synchronize_session=False))
                await session.commit()
                return
            for delivery in (await session.execute(select(Delivery).where(Delivery.id.in_(ids)))).scalars():
                delivery.attempts += 1
                delivery.claimed_until = None
                delivery.claim_token = None
                delivery.last_error = outcome.error
                wait = min(self.settings.notification_retry_base_seconds * 2 ** (delivery.attempts - 1),
                           MAX_BACKOFF_SECONDS)
                next_at = now + timedelta(seconds=wait)
                if next_at > created.get(delivery.event_id, now) + give_up:
                    delivery.status = DeliveryStatus.FAILED.value
                else:
                    delivery.status = DeliveryStatus.RETRYING.value
                    delivery.next_attempt_at = next_at
            await session.commit()
        if not outcome.sent:
            log.info("notification to target not sent (%s); %d event(s) will be retried or failed",
                     outcome.error, len(ids))

    # -- a test message, now

    async def send_test(self, session: AsyncSession, target: NotificationTarget, sender: str) -> SendOutcome:
        """Send a test message to ``target`` now; logged as a delivery like any other."""
        now = utcnow()
        event = OutboxEvent(idempotency_key=str(uuid.uuid4()), kind=NotificationEvent.TEST.value,
                            organization_id=target.organization_id, created_at=now,
                            payload={"subject": "Layerfleet", "text": f"A test message sent by {sender}. "
                                     "Notifications to this target work."})
        message = channels.Message(messages.title_of(event), messages.body_of(event), messages.data_of(event),
                                   event.idempotency_key)
        credentials = self._credentials(target)
        outcome = credentials if isinstance(credentials, SendOutcome) else \
            await self.send_now(credentials[0], message, credentials[1])
        # Logged once sent (or refused): a test is never left for the loop to send again.
        session.add(event)
        await session.flush()
        session.add(Delivery(
            event_id=event.id, target_id=target.id, attempts=1, created_at=now, next_attempt_at=now,
            status=(DeliveryStatus.SENT if outcome.sent else DeliveryStatus.FAILED).value,
            sent_at=utcnow() if outcome.sent else None, message_key=event.idempotency_key if outcome.sent else None,
            last_error=outcome.error))
        await session.commit()
        return outcome

    async def prune(self) -> int:
        """Forget events older than ``notification_keep_days`` whose deliveries are all done, and
        action links a day past their expiry; how many events went."""
        now = utcnow()
        cutoff = now - timedelta(days=self.settings.notification_keep_days)
        async with self._sessionmaker() as session:
            open_events = select(Delivery.event_id).where(Delivery.status.in_(OPEN_STATUSES))
            result = await session.execute(delete(OutboxEvent).where(
                OutboxEvent.created_at < cutoff, OutboxEvent.id.not_in(open_events))
                .execution_options(synchronize_session=False))
            await session.execute(delete(ActionLink).where(ActionLink.expires_at < now - timedelta(days=1))
                                  .execution_options(synchronize_session=False))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


def _fail(delivery: Delivery, error: str) -> None:
    delivery.status = DeliveryStatus.FAILED.value
    delivery.last_error = error
    delivery.claimed_until = None
    delivery.claim_token = None

