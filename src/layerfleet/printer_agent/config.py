"""The agent's configuration: a small TOML file, overridden by command-line flags.

    server = "https://farm.example.com"
    token = "…"                      # the printer token from linking

    [octoprint]                      # or [moonraker]
    url = "http://127.0.0.1:5000"
    api_key = "…"

    [camera]                         # optional; else the host's own webcam settings
    snapshot_url = "http://127.0.0.1:8080/?action=snapshot"
    # stream_url = "http://127.0.0.1:8080/?action=stream"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

EXAMPLE = __doc__.split("\n\n", 1)[1] if __doc__ else ""


class ConfigError(ValueError):
    """The configuration is incomplete or wrong; the message tells the user what to fix."""


@dataclass
class AgentConfig:
    server: str | None = None
    token: str | None = None
    octoprint_url: str | None = None
    octoprint_api_key: str | None = None
    moonraker_url: str | None = None
    moonraker_api_key: str | None = None
    snapshot_url: str | None = None
    stream_url: str | None = None
    name: str | None = None  # a label for the logs

    @classmethod
    def from_file(cls, path: Path) -> AgentConfig:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict):
                if key not in ("octoprint", "moonraker", "camera"):
                    raise ConfigError(f"{path}: unknown section [{key}]")
                for inner, inner_value in value.items():
                    flat[inner if key == "camera" else f"{key}_{inner}"] = inner_value
            else:
                flat[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        for key, value in flat.items():
            if not isinstance(value, str):
                raise ConfigError(f"{path}: {key} must be a string")
        return cls(**flat)

    def overridden(self, **flags: str | None) -> AgentConfig:
        """This configuration with every flag that was given taking precedence."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in flags.items() if v is not None})
        return AgentConfig(**values)

    def validate(self, *, need_token: bool = True) -> None:
        if not self.server:
            raise ConfigError("no server: give --server URL (or `server` in the config file)")
        if not self.server.startswith(("http://", "https://")):
            raise ConfigError(f"the server URL must start with http:// or https://, not {self.server!r}")
        if need_token and not self.token:
            raise ConfigError("no printer token: give --token, or link with --code NNNNNN")
        if bool(self.octoprint_url) == bool(self.moonraker_url):
            raise ConfigError("give exactly one printer host: --octoprint URL or --moonraker URL")
        if self.octoprint_url and not self.octoprint_api_key:
            raise ConfigError("OctoPrint needs an API key: --octoprint-api-key (OctoPrint → Settings → API)")
        if self.snapshot_url and self.stream_url:
            raise ConfigError("give either --snapshot-url or --stream-url, not both")
