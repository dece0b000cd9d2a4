"""Channels as people pick them (email, Discord, Telegram, Slack, ntfy, Pushover, MQTT, webhooks):
the fields each asks for, and the Apprise URL (or signed webhook URL) made from them, so no one
needs to know Apprise's URL syntax."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode, urlsplit

from layerfleet.errors import Invalid


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str = "text"  # text, password, number, email, url, select
    required: bool = True
    placeholder: str = ""
    default: str = ""
    choices: tuple[tuple[str, str], ...] = ()
    hint: str = ""


@dataclass(frozen=True)
class Channel:
    key: str
    label: str
    fields: tuple[Field, ...]
    build: Callable[[Mapping[str, str]], str]
    hint: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _q(text: str) -> str:
    return quote(text, safe="")


def _email(v: Mapping[str, str]) -> str:
    security = v.get("security") or "starttls"
    login = ""
    if v.get("username"):
        login = _q(v["username"]) + (f":{_q(v['password'])}" if v.get("password") else "") + "@"
    scheme = "mailto" if security == "none" else "mailtos"
    mode = {"none": "insecure", "ssl": "ssl", "starttls": "starttls"}[security]
    query = urlencode({"from": v["sender"], "to": v["to"], "mode": mode})
    return f"{scheme}://{login}{v['host']}:{v.get('port') or ('465' if security == 'ssl' else '587')}?{query}"


def _native(prefixes: tuple[str, ...], what: str) -> Callable[[Mapping[str, str]], str]:
    def build(v: Mapping[str, str]) -> str:
        url = v["url"].strip()
        if not url.startswith(prefixes):
            raise Invalid(what, {"url": [f"Paste the {what} (it starts with {prefixes[0]})."]})
        return url
    return build


def _telegram(v: Mapping[str, str]) -> str:
    return f"tgram://{v['bot_token'].strip()}/{_q(v['chat_id'].strip())}"


def _ntfy(v: Mapping[str, str]) -> str:
    server = urlsplit(v.get("server") or "https://ntfy.sh")
    scheme = "ntfys" if server.scheme == "https" else "ntfy"
    return f"{scheme}://{server.netloc}/{_q(v['topic'].strip())}"


def _pushover(v: Mapping[str, str]) -> str:
    device = f"/{_q(v['device'].strip())}" if v.get("device") else ""
    return f"pover://{_q(v['user_key'].strip())}@{_q(v['app_token'].strip())}{device}"


def _mqtt(v: Mapping[str, str]) -> str:
    login = ""
    if v.get("username"):
        login = _q(v["username"]) + (f":{_q(v['password'])}" if v.get("password") else "") + "@"
    topic = (v.get("topic") or "layerfleet/{printer}/event").strip("/")
    return f"mqtt://{login}{v['host']}:{v.get('port') or '1883'}/{topic}"


def _webhook(v: Mapping[str, str]) -> str:
    url = v["url"].strip()
    if not url.startswith(("https://", "http://")):
        raise Invalid("webhook", {"url": ["Enter the receiver's http:// or https:// URL."]})
    return f"webhook+{url}"


def _json(v: Mapping[str, str]) -> str:
    url = v["url"].strip()
    if not url.startswith(("https://", "http://")):
        raise Invalid("json", {"url": ["Enter the receiver's http:// or https:// URL."]})
    return "jsons://" + url.removeprefix("https://") if url.startswith("https://") \
        else "json://" + url.removeprefix("http://")


_HOST = Field("host", "SMTP server", placeholder="smtp.example.com")
CHANNELS: tuple[Channel, ...] = (
    Channel("email", "Email", (
        _HOST, Field("port", "Port", "number", required=False, placeholder="587"),
        Field("security", "Security", "select", default="starttls",
              choices=(("starttls", "STARTTLS"), ("ssl", "TLS (SSL)"), ("none", "None (local servers only)"))),
        Field("username", "User name", required=False), Field("password", "Password", "password", required=False),
        Field("sender", "From address", "email", placeholder="farm@example.com"),
        Field("to", "To address", "email", placeholder="you@example.com"),
    ), _email, "Alerts come with the picture attached and one-tap Resume / Cancel / Mute links."),
    Channel("discord", "Discord", (Field("url", "Webhook URL", "url",
                                         placeholder="https://discord.com/api/webhooks/…"),),
            _native(("https://discord.com/api/webhooks/", "https://discordapp.com/api/webhooks/"),
                    "Discord webhook URL")),
    Channel("telegram", "Telegram", (Field("bot_token", "Bot token", "password", placeholder="123456:ABC…"),
                                     Field("chat_id", "Chat ID", placeholder="-100123456789")), _telegram),
    Channel("slack", "Slack", (Field("url", "Incoming webhook URL", "url",
                                     placeholder="https://hooks.slack.com/services/…"),),
            _native(("https://hooks.slack.com/services/",), "Slack incoming webhook URL")),
    Channel("ntfy", "ntfy", (Field("server", "Server", "url", required=False, default="https://ntfy.sh"),
                             Field("topic", "Topic", placeholder="my-farm-alerts")), _ntfy),
    Channel("pushover", "Pushover", (Field("user_key", "User key", "password"),
                                     Field("app_token", "Application token", "password"),
                                     Field("device", "Device", required=False, hint="Empty: all your devices")),
            _pushover),
    Channel("mqtt", "MQTT (Home Assistant)", (
        Field("host", "Broker", placeholder="homeassistant.local"),
        Field("port", "Port", "number", required=False, placeholder="1883"),
        Field("topic", "Topic", required=False, default="layerfleet/{printer}/event",
              hint="{printer} becomes the printer's id, {printer_name} its name"),
        Field("username", "User name", required=False), Field("password", "Password", "password", required=False),
    ), _mqtt, "Each event is published as JSON."),
    Channel("webhook", "Signed webhook", (Field("url", "Receiver URL", "url", placeholder="https://example.com/hook"),),
            _webhook, "JSON with an X-Layerfleet-Signature HMAC-SHA256 header; the secret is shown once."),
    Channel("json", "JSON webhook (unsigned)", (Field("url", "Receiver URL", "url"),), _json),
    Channel("apprise", "Other (Apprise URL)", (Field("url", "Apprise URL", placeholder="matrixs://…"),),
            lambda v: v["url"].strip(), "Any service Apprise supports."),
)
BY_KEY = {c.key: c for c in CHANNELS}


def url_for(channel_key: str, values: Mapping[str, str]) -> str:
    """The target URL for a channel's filled-in fields; Invalid naming the fields at fault."""
    channel = BY_KEY.get(channel_key)
    if channel is None:
        raise Invalid("channel", {"channel": ["Pick a channel."]})
    cleaned = {f.name: (values.get(f.name) or "").strip() for f in channel.fields}
    missing = {f.name: ["This field is required."] for f in channel.fields if f.required and not cleaned[f.name]}
    if missing:
        raise Invalid("Fill in the channel's fields.", missing)
    for f in channel.fields:
        if f.kind == "select" and cleaned[f.name] and cleaned[f.name] not in {c[0] for c in f.choices}:
            raise Invalid(f.name, {f.name: ["Pick one of the choices."]})
        if f.kind == "number" and cleaned[f.name] and not (cleaned[f.name].isdigit()
                                                           and 0 < int(cleaned[f.name]) < 65536):
            raise Invalid(f.name, {f.name: ["Enter a port number (1–65535)."]})
        if f.name in ("host",) and any(ch in cleaned[f.name] for ch in "/@?# "):
            raise Invalid(f.name, {f.name: ["Enter a host name or address only."]})
    return channel.build(cleaned)
