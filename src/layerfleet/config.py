"""Settings, read once from ``LAYERFLEET_*`` environment variables.

Every setting has a default that is safe for a single self-hosted box: SQLite in the
data directory, an in-process command bus, and a secret key generated on first start and
kept in the data directory (so sessions survive a restart without any configuration).
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.cwd() / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAYERFLEET_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; defaults to SQLite at DATA_DIR/layerfleet.db",
    )
    secret_key: str | None = Field(
        default=None,
        description="Signs session cookies; generated into DATA_DIR/secret_key when unset",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str | None = Field(
        default=None, description="Public URL of the server, used in links it hands out"
    )
    session_cookie_secure: bool = False
    trusted_proxies: str = Field(
        default="", description="Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed; empty: none, the connection's own address counts")
    session_max_age_seconds: int = 14 * 24 * 3600
    redis_url: str | None = Field(
        default=None, description="redis://… to deliver agent commands across server processes"
    )
    initial_detection_hours: float = Field(
        default=100.0, ge=0, description="AI detection hours (dh_balance) a new account starts with"
    )
    unlimited_detection_hours: bool = Field(
        default=False, description="Never run out of detection hours (self-hosting: your own CPU)"
    )
    detection_enabled: bool = Field(default=True, description="Score agents' pictures with the failure detector")
    detection_interval_seconds: float = Field(
        default=10.0, ge=0, description="At most one scored frame per printer in this many seconds"
    )
    detection_batch_size: int = Field(default=8, ge=1, le=64, description="Frames scored together")
    finetune_val_data: Path | None = Field(
        default=None, description="Data set whose val split (images/val, labels/val) a fine-tuned model is measured "
        "on; default ../shared/datasets/print-failures beside the source tree")
    finetune_replay_data: Path | None = Field(
        default=None, description="Data set whose train split is mixed into fine-tuning (default: the val data set)")
    finetune_steps: int = Field(default=150, ge=1, le=100_000, description="Optimiser steps of a fine-tuning job")
    finetune_size: int | None = Field(default=None, ge=64, le=1024, multiple_of=32,
                                      description="Input size of fine-tuned models (default: the shipped model's)")
    finetune_workers: int = Field(default=1, ge=0, le=8,
                                  description="Fine-tuning jobs a process runs at once; 0 leaves them to workers")
    finetune_timeout_seconds: float = Field(default=4 * 3600, gt=0,
                                            description="A fine-tuning job is stopped after this")
    scoring_on_workers: bool = Field(
        default=False, description="Servers only receive pictures; `layerfleet worker` processes score them "
        "(needs LAYERFLEET_REDIS_URL and a data directory shared by all processes)")
    scoring_backlog_limit: int = Field(
        default=5000, ge=1, description="Frames that may wait for the scoring workers before new ones are dropped")
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="A `layerfleet worker` serves its Prometheus metrics on this port "
        "(on 127.0.0.1 unless LAYERFLEET_WORKER_METRICS_HOST says otherwise); unset: not served")
    worker_metrics_host: str = Field(default="127.0.0.1", description="Address the worker's metrics listen on")
    scoring_takeover_seconds: float = Field(
        default=30.0, gt=0, description="A frame a scoring worker took and did not finish in this long (it died) "
        "is taken over by another worker")
    redis_namespace: str = Field(default="layerfleet", pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                                 description="Prefix of this installation's Redis keys")
    job_workers: int = Field(
        default=1, ge=0, le=32,
        description="Background jobs (slicing) this process runs at once; 0 leaves them to `layerfleet worker`",
    )
    slice_timeout_seconds: float = Field(default=600.0, gt=0, description="A slice taking longer is stopped")
    # --- notifications (layerfleet.notifications)
    notification_retry_hours: float = Field(
        default=24.0, gt=0, description="A delivery that keeps failing is retried (with backoff) this long")
    notification_retry_base_seconds: float = Field(
        default=30.0, gt=0, description="The first retry's wait; each next one doubles, up to an hour")
    notification_digest_window_seconds: float = Field(
        default=60.0, gt=0, description="Messages to one target within this window beyond the threshold "
        "are held and sent as one digest")
    notification_digest_threshold: int = Field(
        default=3, ge=1, description="Messages to one target within the digest window before a digest")
    notification_rate_per_minute: int = Field(
        default=10, ge=1, description="At most this many messages per target per minute (failure alerts excepted)")
    notification_send_timeout_seconds: float = Field(
        default=20.0, gt=0, description="A send taking longer is abandoned and retried later")
    notification_concurrency: int = Field(default=8, ge=1, le=64, description="Targets sent to at once")
    notification_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the delivery loop looks for due deliveries")
    notification_workers: bool = Field(
        default=True, description="This process delivers notifications (a `layerfleet worker` also does)")
    notification_keep_days: float = Field(
        default=30.0, gt=0, description="Sent and failed notifications are kept this long (the delivery log)")
    printer_offline_minutes: float = Field(
        default=3.0, gt=0, description="An agent gone this long while printing raises PrinterOffline")
    agent_silent_minutes: float = Field(
        default=5.0, gt=1, description="A printer whose agent sent nothing this long is offline, as after a server "
        "crash (agents send a status at least every 50 s); PrinterOffline if it was printing")
    # --- Timelapses: videos of prints and uploaded timelapses (layerfleet.timelapses) ---
    timelapse_enabled: bool = Field(default=True, description="Keep prints' frames and compile their timelapses")
    timelapse_frame_interval_seconds: float = Field(
        default=10.0, ge=0, description="At most one picture per print in this many seconds is kept for its video")
    timelapse_min_finished_seconds: float = Field(
        default=600.0, ge=0, description="A finished print shorter than this gets no video")
    timelapse_min_cancelled_seconds: float = Field(
        default=300.0, ge=0, description="A cancelled print shorter than this gets no video")
    timelapse_fps: int = Field(default=30, ge=1, le=120, description="Frames per second of compiled videos")
    timelapse_workers: int = Field(
        default=1, ge=0, le=8, description="Videos this process compiles at once; 0 leaves them to `layerfleet worker`")
    timelapse_stale_seconds: float = Field(
        default=60.0, gt=0, description="A timelapse job whose worker gave no sign of life this long runs again")
    timelapse_upload_max_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Largest timelapse upload (refused by Content-Length before reading)")
    timelapse_upload_max_side: int = Field(
        default=4096, ge=16, description="Widest or tallest picture an uploaded timelapse may have")
    timelapse_upload_print_seconds_per_frame: float = Field(
        default=10.0, gt=0, description="An uploaded timelapse is scored at one frame per this many print seconds")
    timelapse_keep_frames_days: float = Field(
        default=0.0, ge=0, description="Days a print's raw frames stay once both its videos exist (0: removed then)")
    timelapse_keep_videos_days: float = Field(
        default=0.0, ge=0, description="Days a print's videos are kept (0: forever)")
    timelapse_min_free_bytes: int = Field(
        default=256 * 1024**2, ge=0, description="Frames stop being kept when the data disk has less free space")
    timelapse_retention_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often old frames and videos are looked for")
    scored_frames_keep_days: float = Field(
        default=14.0, ge=0, description="Days the pictures of an ended print's scored frames stay, but those an "
        "alert, a feedback shot, a quality defect or fine-tuning may need (0: forever)")
    db_echo: bool = False
    log_level: str = "info"

    @model_validator(mode="after")
    def _workers_need_redis(self) -> Settings:
        if self.scoring_on_workers and not self.redis_url:
            raise ValueError("LAYERFLEET_SCORING_ON_WORKERS needs LAYERFLEET_REDIS_URL: the workers take frames "
                             "from Redis")
        return self

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'layerfleet.db'}"

    @property
    def public_base_url(self) -> str:
        return (self.base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @cached_property
    def effective_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key_file = self.data_dir / "secret_key"
        if not key_file.exists():
            key_file.touch(mode=0o600)
            key_file.write_text(secrets.token_urlsafe(48))
        return key_file.read_text().strip()


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
