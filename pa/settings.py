"""Every PA_* setting, read once from the environment or a `.env` file.

`settings` is the configuration of this process: the one a factory was given
(pa.runtime.configure, called by create_app() and the consumer's factory), or,
for code that runs without one (a command, a test helper), the environment's,
read at first use. Nothing is read at import.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.config import Config
from starlette.datastructures import CommaSeparatedStrings


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    data_dir: Path
    secret_key: str
    smtp_url: str | None
    mail_from: str
    host: str
    port: int
    backup_cron: str
    backup_keep: int
    job_retention_days: int
    max_upload_mb: int
    allowed_origins: tuple[str, ...]
    #: the app's public origin (scheme://host[:port], normalized), or None
    public_url: str | None
    #: GET /metrics needs `Authorization: Bearer <it>` when set
    metrics_token: str | None
    #: where a consumer's --metrics-port listens
    metrics_host: str
    # Not in DESIGN.md's table: operational knobs of the recovery path (see OPERATIONS.md).
    worker_ttl: int
    reaper_interval: int

    @property
    def embedded(self) -> bool:
        """No Redis: SQLite queue, consumer threads in the web process, in-process events."""
        return not self.redis_url

    @property
    def public_host(self) -> str | None:
        """PA_PUBLIC_URL's host name (what a request's Host must name), or None."""
        return urlsplit(self.public_url).hostname if self.public_url else None

    @property
    def https(self) -> bool:
        """PA_PUBLIC_URL is https: the session cookie is Secure."""
        return bool(self.public_url and self.public_url.startswith("https://"))

    def link(self, path: str) -> str:
        """An absolute URL of `path` for a mail: on PA_PUBLIC_URL, else where
        run_web.py listens."""
        return f"{self.public_url or f'http://{self.host}:{self.port}'}{path}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


#: the shortest PA_SECRET_KEY accepted (DESIGN.md): it signs every session cookie
MIN_SECRET_KEY = 32


def _secret_key(config: Config, data_dir: Path) -> str:
    key = config("PA_SECRET_KEY", default=None)
    if key:
        if len(str(key)) < MIN_SECRET_KEY:
            raise ValueError(
                f"PA_SECRET_KEY is {len(str(key))} characters long; it must have at least "
                f"{MIN_SECRET_KEY} (it signs the session cookies). Make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'")
        return str(key)
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting at once must agree on one key; 0600 from the
    # first byte, so that it is never readable by others.
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def _public_url(value: str | None) -> str | None:
    """PA_PUBLIC_URL as `scheme://host[:port]` (lower case, no default port), or
    None; ValueError unless it is an http(s) origin."""
    if not value:
        return None
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username or parts.password):
        raise ValueError(f"PA_PUBLIC_URL must be the app's origin, such as "
                         f"https://pa.example.com (no path); got {value!r}.")
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read the PA_* variables (the environment wins over `.env`)."""
    env_path = Path(env_file) if env_file and Path(env_file).is_file() else None
    config = Config(env_path)
    data_dir = Path(config("PA_DATA_DIR", default="var"))
    default_db = f"sqlite:///{data_dir / 'pa.db'}"
    return Settings(
        database_url=config("PA_DATABASE_URL", default=default_db),
        redis_url=config("PA_REDIS_URL", default=None) or None,
        data_dir=data_dir,
        secret_key=_secret_key(config, data_dir),
        smtp_url=config("PA_SMTP_URL", default=None) or None,
        mail_from=config("PA_MAIL_FROM", default="pa@localhost"),
        host=config("PA_HOST", default="127.0.0.1"),
        port=config("PA_PORT", cast=int, default=8000),
        backup_cron=config("PA_BACKUP_CRON", default="0 2 * * *"),
        backup_keep=config("PA_BACKUP_KEEP", cast=int, default=7),
        job_retention_days=config("PA_JOB_RETENTION_DAYS", cast=int, default=30),
        max_upload_mb=config("PA_MAX_UPLOAD_MB", cast=int, default=50),
        allowed_origins=tuple(
            o.rstrip("/") for o in config(
                "PA_ALLOWED_ORIGINS", cast=CommaSeparatedStrings, default=""
            )
        ),
        public_url=_public_url(config("PA_PUBLIC_URL", default=None)),
        metrics_token=config("PA_METRICS_TOKEN", default=None) or None,
        metrics_host=config("PA_METRICS_HOST", default="127.0.0.1"),
        # A SIGKILLed consumer's jobs are back in the queue after at most the TTL
        # plus one reaper interval (15 s): DESIGN.md's recovery times ask for 30 s.
        worker_ttl=config("PA_WORKER_TTL", cast=int, default=10),
        reaper_interval=config("PA_REAPER_INTERVAL", cast=int, default=5),
    )


class _Current:
    """The process's Settings, read from the environment at first use unless a
    factory configured it (as Django's `settings` does)."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.get(), name)

    def get(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def set(self, value: Settings) -> None:
        self._settings = value


settings: Settings = _Current()  # type: ignore[assignment]


def configure(value: Settings) -> None:
    """Make `value` this process's settings (pa.runtime.configure calls it)."""
    _current.set(value)


def current() -> Settings:
    """This process's settings, as a plain Settings object."""
    return _current.get()


_current: _Current = settings  # type: ignore[assignment]
