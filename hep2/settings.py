"""One typed settings object, read from ``HEP2_*`` environment variables and an optional ``.env`` file.

The defaults are the *embedded* mode: a SQLite file, a local folder as the bucket and a SQLite broker, so
nothing has to be installed to run the service on one machine. Production sets the URLs to PostgreSQL,
Redis and an S3 endpoint (MinIO, Ceph, AWS).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    signing_key: SecretStr = Field(
        SecretStr("embedded-mode-not-secret"),
        description="HMAC key for local presigned URLs; set a random value in production.",
    )
    webhook_token: SecretStr | None = Field(None, description="Bearer token the S3 webhook must present.")

    sweep_interval_s: float = Field(300.0, description="How often beat sweeps the inbox for missed uploads.")
    requeue_after_s: float = Field(900.0, description="A slide queued this long without starting is re-sent.")
    task_soft_time_limit_s: int = Field(600, description="Soft time limit of analysis tasks (seconds).")
    task_time_limit_s: int = Field(900, description="Hard time limit of analysis tasks (seconds).")
    training_time_limit_s: int = Field(6 * 3600, description="Hard time limit of training tasks (seconds).")
    visibility_timeout_s: int | None = Field(
        None, description="Redis: redeliver an unacknowledged task after this long; empty = training limit + 10 min.")

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


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
