"""Accounts: organizations, members, API tokens and authentication rules."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from layerfleet.accounts.models import AccessKey, ApiToken, Organization, Role, User, WebSession
from layerfleet.accounts.passwords import MIN_PASSWORD_LENGTH, hash_password_async, verify_password_async
from layerfleet.database import utcnow
from layerfleet.errors import Invalid

API_TOKEN_PREFIX = "lf_"
ACCESS_KEY_PREFIX = "LFAK"
DEFAULT_ORGANIZATION_NAME = "My print farm"
LABEL_MAX_LENGTH = 100  # ApiToken.name, AccessKey.name


class AccountError(Invalid):
    """A request about accounts that cannot be carried out; the message is for a person."""


def normalize_email(email: str) -> str:
    email = email.strip()
    local, sep, domain = email.rpartition("@")
    if not sep or not local or not domain or " " in email or "." not in domain:
        raise AccountError(f"'{email}' is not a valid email address")
    return f"{local}@{domain.lower()}"


def clean_label(value: str) -> str:
    """A credential's label (an API token's, a PrintWatch key's name) as it is kept: free text,
    but without control characters (NUL above all, which PostgreSQL refuses in text)."""
    return "".join(ch for ch in value if unicodedata.category(ch) not in {"Cc", "Cs"}).strip()


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    email = normalize_email(email)
    return (await session.execute(select(User).where(func.lower(User.email) == email.lower()))).scalar_one_or_none()


async def get_or_create_organization(session: AsyncSession, name: str | None) -> tuple[Organization, bool]:
    query = select(Organization).order_by(Organization.id).limit(1)
    if name:
        query = select(Organization).where(Organization.name == name).limit(1)
    organization = (await session.execute(query)).scalar_one_or_none()
    if organization is not None:
        return organization, False
    organization = Organization(name=name or DEFAULT_ORGANIZATION_NAME)
    session.add(organization)
    await session.flush()
    return organization, True


async def create_user(
    session: AsyncSession,
    email: str,
    password: str | None,
    *,
    role: Role = Role.OPERATOR,
    organization_name: str | None = None,
    name: str | None = None,
    dh_balance: float = 0.0,
) -> User:
    """Create a member. The first member of a new organization is its owner."""
    email = normalize_email(email)
    if await get_user_by_email(session, email) is not None:
        raise AccountError(f"a user with email {email} already exists")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    organization, created = await get_or_create_organization(session, organization_name)
    user = User(
        organization_id=organization.id,
        email=email,
        name=name,
        password_hash=await hash_password_async(password) if password else None,
        role=(Role.OWNER if created else role).value,
        dh_balance=dh_balance,
    )
    session.add(user)
    await session.flush()
    await session.refresh(user, ["organization"])
    return user


async def authenticate_password(session: AsyncSession, email: str, password: str) -> User | None:
    try:
        user = await get_user_by_email(session, email)
    except AccountError:
        user = None
    ok = await verify_password_async(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        return None
    user.last_login_at = utcnow()
    return user


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    key: str  # shown once; only its hash is stored


async def create_api_token(session: AsyncSession, user: User, name: str = "") -> IssuedToken:
    key = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name, key_prefix=key[:10], key_hash=_hash_key(key))
    session.add(token)
    await session.flush()
    return IssuedToken(token=token, key=key)


async def user_for_api_key(session: AsyncSession, key: str) -> User | None:
    token = (
        await session.execute(select(ApiToken).where(ApiToken.key_hash == _hash_key(key)))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None or not token.user.is_active:
        return None
    _record_use(token)
    return token.user


def _record_use(credential: ApiToken | AccessKey) -> None:
    # At minute granularity: a write on every request would cost more than it tells.
    now = utcnow()
    if credential.last_used_at is None or (now - credential.last_used_at).total_seconds() > 60:
        credential.last_used_at = now


async def api_tokens_of(session: AsyncSession, user: User) -> list[ApiToken]:
    query = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
    return list((await session.execute(query)).scalars())


async def revoke_api_token(session: AsyncSession, user: User, token_id: int) -> bool:
    token = await session.get(ApiToken, token_id)
    if token is None or token.user_id != user.id or token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    return True


@dataclass(frozen=True)
class IssuedAccessKey:
    key: AccessKey
    secret: str  # shown once; only its hash is stored

    @property
    def access_key(self) -> str:
        return self.key.access_key


async def create_access_key(session: AsyncSession, user: User, name: str = "") -> IssuedAccessKey:
    """An access key / secret key pair for HTTP Basic auth (the Eiger dialect)."""
    access = ACCESS_KEY_PREFIX + secrets.token_hex(10).upper()
    secret = secrets.token_urlsafe(30)
    key = AccessKey(user_id=user.id, name=name, access_key=access, secret_hash=_hash_key(secret))
    session.add(key)
    await session.flush()
    return IssuedAccessKey(key=key, secret=secret)


async def user_for_access_key(session: AsyncSession, access_key: str, secret: str) -> User | None:
    key = (await session.execute(select(AccessKey).where(AccessKey.access_key == access_key))).scalar_one_or_none()
    # The secret's hash is compared even for an unknown key, so timing tells nothing.
    expected = key.secret_hash if key is not None else _hash_key("")
    if not hmac.compare_digest(expected, _hash_key(secret)) or key is None:
        return None
    if key.revoked_at is not None or not key.user.is_active:
        return None
    _record_use(key)
    return key.user


async def access_keys_of(session: AsyncSession, user: User) -> list[AccessKey]:
    query = select(AccessKey).where(AccessKey.user_id == user.id).order_by(AccessKey.id)
    return list((await session.execute(query)).scalars())


async def revoke_access_key(session: AsyncSession, user: User, key_id: int) -> bool:
    key = await session.get(AccessKey, key_id)
    if key is None or key.user_id != user.id or key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    return True


async def set_password(session: AsyncSession, user: User, password: str) -> None:
    """Change a password; every browser signed in to the account is signed out."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = await hash_password_async(password)
    await session.execute(delete(WebSession).where(WebSession.user_id == user.id))


async def start_web_session(session: AsyncSession, user: User, lifetime_seconds: int) -> str:
    key = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(WebSession(
        user_id=user.id, key_hash=_hash_key(key), created_at=now, last_seen_at=now,
        expires_at=now + timedelta(seconds=lifetime_seconds),
    ))
    await session.flush()
    return key


async def user_for_web_session(session: AsyncSession, key: str) -> User | None:
    web_session = (
        await session.execute(select(WebSession).where(WebSession.key_hash == _hash_key(key)))
    ).scalar_one_or_none()
    now = utcnow()
    if web_session is None or web_session.expires_at <= now or not web_session.user.is_active:
        return None
    if (now - web_session.last_seen_at).total_seconds() > 60:
        web_session.last_seen_at = now
    return web_session.user


async def end_web_session(session: AsyncSession, key: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.key_hash == _hash_key(key)))
