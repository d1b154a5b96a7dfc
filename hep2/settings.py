"""One typed settings object, read from ``HEP2_*`` environment variables and an optional ``.env`` file.

The defaults are the *embedded* mode: a SQLite file, a local folder as the bucket and a SQLite broker, so
nothing has to be installed to run the service on one machine. Production sets the URLs to PostgreSQL,
Redis and an S3 endpoint (MinIO, Ceph, AWS).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_SIGNING_KEY = "embedded-mode-not-secret"
DEFAULT_PSEUDONYM_PATTERN = r"^(?=[^0-9]*[0-9])[A-Za-z0-9][A-Za-z0-9._:-]{2,63}$"
MIN_SIGNING_KEY_CHARS = 32
MIN_TOKEN_CHARS = 16
WEAK_SECRETS = frozenset({EMBEDDED_SIGNING_KEY, "minioadmin", "minio123", "admin", "password", "secret",
                          "changeme", "change-me"})
"""Values that are defaults somewhere (the embedded signing key, MinIO's root account) or obvious placeholders."""


class InsecureSettingsError(RuntimeError):
    """Production settings with a default, placeholder or missing secret: the service refuses to start."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEP2_", env_file=".env", extra="ignore")

    state_dir: Path = Field(Path("var"), description="Folder for embedded-mode state (SQLite files, bucket).")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file in state_dir.")
    broker_url: str = Field("", description="Celery broker URL; empty = file broker in state_dir/broker.")
    result_backend: str = Field("", description="Celery result backend; empty = SQLite file in state_dir.")

    storage_backend: Literal["local", "s3"] = Field("local", description="Object storage backend.")
    storage_root: Path | None = Field(None, description="Local bucket folder; empty = state_dir/bucket.")
    s3_bucket: str = Field("hep2", description="Bucket that holds uploads, overlays and model artefacts.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO/Ceph); empty = AWS.")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    s3_access_key_id: str | None = Field(None, description="S3 access key; empty = boto3's default chain.")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_public_endpoint_url: str | None = Field(
        None, description="S3 endpoint as browsers reach it (e.g. https://s3.lab.example), used in presigned "
                          "links; empty = HEP2_S3_ENDPOINT_URL.")
    inbox_prefix: str = Field("inbox/", description="Key prefix where scanners upload slide images.")

    pipeline_config: Path | None = Field(
        None, description="JSON/TOML with a lab's pipeline cut-offs (cells, intensity, specimen; docs/pipeline.md).")
    segmenter: Literal["auto", "unet", "classical"] = Field(
        "auto", description="Nucleus segmenter when the registry has none: auto = the bundled card's choice.")
    cell_model_path: Path | None = Field(None, description="Pin the cell classifier weights; empty = bundled model.")
    cell_precision: Literal["default", "auto", "fp32", "bf16"] = Field(
        "default", description="Cell classifier inference: default = bf16 on a CPU with native bf16, else auto "
                               "(bf16/fp16 autocast on CUDA, fp32 on the CPU); fp32 | bf16 force one.")
    accept_16bit: bool = Field(
        False, description="Analyse 16-bit images; off = reject them (classifier and cut-offs are calibrated on "
                           "8-bit). Turn on after recalibrating the intensity cut-offs for 16-bit scans.")
    retrain_cron: str = Field("0 3 * * 0", description="Scheduled retraining (cron: minute hour dom month dow).")
    retrain_min_new_labels: int = Field(200, description="Start a run once this many new reviewed cell labels exist.")
    retrain_parameters: dict[str, Any] = Field(default_factory=dict,
                                               description="Parameters of scheduled runs (JSON; see RunParameters).")
    promotion_min_mca_gain: float = Field(
        0.005, description="A candidate must beat production's grouped-CV MCA on the same folds by this much.")
    promotion_max_recall_drop: float = Field(0.02, description="...and no class recall may fall by more than this.")
    promotion_max_specimen_loss: int = Field(
        0, ge=0, description="...and it may call at most this many more specimens wrong (out-of-fold).")
    signing_key: SecretStr = Field(
        SecretStr(EMBEDDED_SIGNING_KEY),
        description="HMAC key for local presigned URLs; set a random value in production.",
    )
    webhook_token: SecretStr | None = Field(None, description="Bearer token the S3 webhook must present.")
    pseudonym_pattern: str = Field(
        DEFAULT_PSEUDONYM_PATTERN,
        description="Regular expression every sidecar patient_id and specimen_id must match (pseudonyms, not "
                    "names); default: 3-64 letters, digits or . _ : -, at least one digit.")

    sweep_interval_s: float = Field(300.0, description="How often beat sweeps the inbox for missed uploads.")
    requeue_after_s: float = Field(900.0, description="A slide queued this long without starting is re-sent.")
    task_soft_time_limit_s: int = Field(600, description="Soft time limit of analysis tasks (seconds).")
    task_time_limit_s: int = Field(900, description="Hard time limit of analysis tasks (seconds).")
    training_time_limit_s: int = Field(6 * 3600, description="Hard time limit of training tasks (seconds).")
    visibility_timeout_s: int | None = Field(
        None, description="Redis: redeliver an unacknowledged task after this long; empty = training limit + 10 min.")
    max_worker_deaths: int = Field(
        3, ge=1, description="A slide whose analysis killed (or outlived) its worker this many times is failed "
                             "instead of redelivered again.")

    @field_validator("pseudonym_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @property
    def embedded(self) -> bool:
        """True in the embedded mode (SQLite, file broker, local bucket on one machine): nothing is served to
        a network, so the embedded defaults are acceptable; any server URL means production."""
        return not self.database_url and not self.broker_url and self.storage_backend == "local"
    # LIS delivery of signed-out reports (HL7 v2 over MLLP; docs/reports.md)
    lis_host: str | None = Field(None, description="LIS MLLP host; empty = reports wait in the outbox.")
    lis_port: int = Field(2575, description="LIS MLLP port.")
    lis_timeout_s: float = Field(30.0, description="Connect and ACK timeout of one MLLP send (seconds).")
    lis_retry_base_s: float = Field(5.0, description="First retry delay after a failed send; doubles each time.")
    lis_retry_max_s: float = Field(300.0, description="Longest retry delay; beat re-sends messages overdue by this.")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'hep2.sqlite3').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_result_backend(self) -> str:
        return self.result_backend or f"db+sqlite:///{(self.state_dir / 'results.sqlite3').resolve()}"

    @property
    def resolved_storage_root(self) -> Path:
        return (self.storage_root or self.state_dir / "bucket").resolve()


def _weak(value: str) -> bool:
    return value.strip().lower() in WEAK_SECRETS or "change-me" in value.lower() or "changeme" in value.lower()


def insecure_settings(settings: Settings) -> list[str]:
    """Why these settings must not serve production (empty list: fine). Embedded mode is always fine."""
    if settings.embedded:
        return []
    problems = []
    signing = settings.signing_key.get_secret_value()
    if _weak(signing) or len(signing) < MIN_SIGNING_KEY_CHARS:
        problems.append(f"HEP2_SIGNING_KEY is a default or placeholder or shorter than {MIN_SIGNING_KEY_CHARS} "
                        "characters (it signs download links)")
    token = settings.webhook_token.get_secret_value() if settings.webhook_token else ""
    if token and (_weak(token) or len(token) < MIN_TOKEN_CHARS):
        problems.append(f"HEP2_WEBHOOK_TOKEN is a default or placeholder or shorter than {MIN_TOKEN_CHARS} characters")
    if settings.storage_backend == "s3":
        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else ""
        if secret and _weak(secret):
            problems.append("HEP2_S3_SECRET_ACCESS_KEY is a default or placeholder")
        if settings.s3_access_key_id and _weak(settings.s3_access_key_id):
            problems.append("HEP2_S3_ACCESS_KEY_ID is a default account (e.g. MinIO's minioadmin)")
    return problems


def require_secure_settings(settings: Settings | None = None) -> None:
    """Raise :class:`InsecureSettingsError` when production settings keep a default or placeholder secret
    (the API, workers and beat call this at start-up)."""
    problems = insecure_settings(settings or get_settings())
    if problems:
        raise InsecureSettingsError(
            "refusing to start outside embedded mode with insecure settings: " + "; ".join(problems)
            + ". Generate secrets with `openssl rand -hex 32` (docs/deployment.md).")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
