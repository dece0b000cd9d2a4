"""The agent's configuration: a small TOML file, overridden by command-line flags.

    server = "https://farm.example.com"
    token = "…"                      # the printer token from linking

    [octoprint]                      # or [moonraker]
    url = "http://127.0.0.1:5000"
    api_key = "…"

    [camera]                         # optional; else the host's own webcam settings
    snapshot_url = "http://127.0.0.1:8080/?action=snapshot"
    # stream_url = "http://127.0.0.1:8080/?action=stream"

    [[cameras]]                      # optional, repeated: the printer's other cameras
    name = "side"                    # how the server tells it apart (at most 64 characters)
    snapshot_url = "http://127.0.0.1:8081/?action=snapshot"   # or stream_url
    # nozzle = true                  # a nozzle camera: shown, never scored
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

EXAMPLE = __doc__.split("\n\n", 1)[1] if __doc__ else ""


class ConfigError(ValueError):
    """The configuration is incomplete or wrong; the message tells the user what to fix."""


MAX_CAMERA_NAME = 64  # what the server keeps of a camera's name
MAX_OTHER_CAMERAS = 8  # what the server keeps of a printer's cameras besides the primary


@dataclass(frozen=True)
class CameraConfig:
    """One of the printer's cameras besides the primary (``[camera]``), sent by its name."""

    name: str
    snapshot_url: str | None = None
    stream_url: str | None = None
    nozzle: bool = False


def _cameras(path: Path, value: object) -> list[CameraConfig]:
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ConfigError(f"{path}: cameras must be tables: [[cameras]]")
    cameras: list[CameraConfig] = []
    for number, entry in enumerate(value, start=1):
        unknown = sorted(set(entry) - {"name", "snapshot_url", "stream_url", "nozzle"})
        if unknown:
            raise ConfigError(f"{path}: camera {number}: unknown setting(s) {', '.join(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_CAMERA_NAME:
            raise ConfigError(f"{path}: camera {number} needs a name of 1 to {MAX_CAMERA_NAME} characters")
        urls = {key: entry.get(key) for key in ("snapshot_url", "stream_url")}
        if any(url is not None and not isinstance(url, str) for url in urls.values()) \
                or sum(bool(url) for url in urls.values()) != 1:
            raise ConfigError(f"{path}: camera {name!r} needs one of snapshot_url or stream_url (a string)")
        nozzle = entry.get("nozzle", False)
        if not isinstance(nozzle, bool):
            raise ConfigError(f"{path}: camera {name!r}: nozzle must be true or false")
        cameras.append(CameraConfig(name.strip(), urls["snapshot_url"], urls["stream_url"], nozzle))
    names = [camera.name for camera in cameras]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: two cameras have the same name; the server tells them apart by it")
    if len(cameras) > MAX_OTHER_CAMERAS:
        raise ConfigError(f"{path}: at most {MAX_OTHER_CAMERAS} cameras besides [camera]")
    return cameras


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
    cameras: list[CameraConfig] = field(default_factory=list)  # besides the primary one

    @classmethod
    def from_file(cls, path: Path) -> AgentConfig:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        flat: dict[str, Any] = {}
        cameras = _cameras(path, data.pop("cameras")) if "cameras" in data else []
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
        return cls(**flat, cameras=cameras)

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
