"""Object storage: one interface, two backends.

* :class:`S3Storage` talks to any S3-compatible endpoint (MinIO, Ceph, AWS) through boto3 with path-style
  addressing.
* :class:`LocalStorage` keeps objects as files under a folder (embedded mode). It mimics S3 where it
  matters to callers: MD5 ETags for single-part objects, prefix listing in key order, presigned URLs
  (HMAC-signed, verified by :func:`verify_local_signature`).

Keys are validated the same way for both: relative, ``/``-separated, no ``..`` or empty segments, no control
characters (a newline in a key would forge log lines).

:meth:`ObjectStorage.fetch` returns the bytes together with the ETag and version of exactly those bytes, and
reads a given version when one is named: the analysis reads the object version that was registered
(S3 ``VersionId`` on a versioned bucket), never "whatever is under the key now".
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from hep2.settings import Settings, get_settings

MAX_KEY_BYTES = 1024  # S3's own limit


class InvalidKeyError(ValueError):
    """The object key is unsafe or malformed."""


class ObjectNotFoundError(KeyError):
    """No object under that key (or no such version of it)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: datetime
    version_id: str | None = None


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes and the metadata of exactly those bytes (from the same read)."""

    data: bytes
    etag: str  # without quotes
    version_id: str | None = None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`InvalidKeyError`."""
    if not key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key must be 1..{MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key):
        raise InvalidKeyError(f"object key {key!r} contains control characters (newline, tab, ...)")
    if key.startswith("/") or "\\" in key:
        raise InvalidKeyError(f"object key {key!r} must be relative and use '/' separators")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", ".."):
        raise InvalidKeyError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


class ObjectStorage(Protocol):
    bucket: str

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo: ...
    def get(self, key: str) -> bytes: ...
    def fetch(self, key: str, version_id: str | None = None) -> StoredObject: ...
    def head(self, key: str) -> ObjectInfo: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def presigned_url(self, key: str, expires_s: int = 300) -> str: ...


class S3Storage:
    """Objects in an S3-compatible bucket."""

    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1",
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 public_endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                        signature_version="s3v4")
        credentials = {"region_name": region, "aws_access_key_id": access_key_id,
                       "aws_secret_access_key": secret_access_key, "config": config}
        self.client = boto3.client("s3", endpoint_url=endpoint_url, **credentials)
        # Presigned links are opened by browsers: they must name the host users reach (the signature
        # covers the host, so the URL cannot be rewritten afterwards), not the internal one.
        self._presigner = (boto3.client("s3", endpoint_url=public_endpoint_url, **credentials)
                           if public_endpoint_url else self.client)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (set-up scripts and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store ``data``; its ETag and version come from the PUT's own response (no second request), the
        time from the response's ``Date`` (when the server stored it; S3 keeps that as Last-Modified)."""
        response = self.client.put_object(Bucket=self.bucket, Key=validate_key(key), Body=data,
                                          ContentType=content_type)
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        return ObjectInfo(key=key, size=len(data), etag=response["ETag"].strip('"'),
                          last_modified=parsedate_to_datetime(date) if date else datetime.now(UTC),
                          version_id=response.get("VersionId"))

    def get(self, key: str) -> bytes:
        return self.fetch(key).data

    def fetch(self, key: str, version_id: str | None = None) -> StoredObject:
        extra = {"VersionId": version_id} if version_id else {}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=validate_key(key), **extra)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "NoSuchVersion", "404"):
                raise ObjectNotFoundError(key) from exc
            raise
        return StoredObject(response["Body"].read(), response["ETag"].strip('"'), response.get("VersionId"))

    def versioned(self) -> bool:
        """True when the bucket keeps every version (objects can be read by the VersionId registered)."""
        return self.client.get_bucket_versioning(Bucket=self.bucket).get("Status") == "Enabled"

    def head(self, key: str) -> ObjectInfo:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(key) from exc
            raise
        return ObjectInfo(key=key, size=meta["ContentLength"], etag=meta["ETag"].strip('"'),
                          last_modified=meta["LastModified"], version_id=meta.get("VersionId"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(key=obj["Key"], size=obj["Size"], etag=obj["ETag"].strip('"'),
                                 last_modified=obj["LastModified"])

    def presigned_url(self, key: str, expires_s: int = 300) -> str:
        return self._presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": validate_key(key)}, ExpiresIn=expires_s)


class LocalStorage:
    """Objects as files under ``root/<bucket>/`` (embedded mode, no server)."""

    def __init__(self, root: Path, bucket: str, signing_key: bytes) -> None:
        self.bucket = bucket
        self.base = (Path(root) / bucket).resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self._signing_key = signing_key

    def _path(self, key: str) -> Path:
        path = (self.base / validate_key(key)).resolve()
        if not path.is_relative_to(self.base):
            raise InvalidKeyError(f"object key {key!r} escapes the bucket")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write to a temporary file and rename: readers never see a half-written object.
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".put-") as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)
        return self.head(key)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(key)
        return path.read_bytes()

    def fetch(self, key: str, version_id: str | None = None) -> StoredObject:
        """The bytes and their MD5 ETag (computed from the very bytes read); no versions in a folder."""
        if version_id is not None:
            raise ObjectNotFoundError(f"{key} (version {version_id}: the local bucket keeps no versions)")
        data = self.get(key)
        return StoredObject(data, hashlib.md5(data, usedforsecurity=False).hexdigest())

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFoundError(key)
        return self._info(key, path)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        keys = sorted(p.relative_to(self.base).as_posix() for p in self.base.rglob("*")
                      if p.is_file() and not p.name.startswith(".put-"))
        for key in keys:
            if key.startswith(prefix):
                yield self._info(key, self.base / key)

    def presigned_url(self, key: str, expires_s: int = 300) -> str:
        expires = int(time.time()) + expires_s
        signature = _sign(self._signing_key, self.bucket, validate_key(key), expires)
        return f"/v1/objects/{quote(key)}?expires={expires}&signature={signature}"

    def verify_signature(self, key: str, expires: int, signature: str) -> bool:
        """True if a URL from :meth:`presigned_url` is authentic and not expired."""
        expected = _sign(self._signing_key, self.bucket, key, expires)
        return expires >= time.time() and hmac.compare_digest(expected, signature)

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(key=key, size=stat.st_size, etag=_local_etag(path, stat),
                          last_modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC))


_ETAGS: dict[Path, tuple[tuple[int, int, int], str]] = {}
"""MD5 ETags of local objects by path, valid while (size, mtime, inode) stay the same: an inbox sweep lists
every object, and re-reading them all each time would grow with the inbox. ``put`` renames a new file into
place, so a replaced object always has a new inode."""


def _local_etag(path: Path, stat: os.stat_result) -> str:
    version = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    cached = _ETAGS.get(path)
    if cached is None or cached[0] != version:
        cached = (version, hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest())
        _ETAGS[path] = cached
    return cached[1]


def _sign(secret: bytes, bucket: str, key: str, expires: int) -> str:
    return hmac.new(secret, f"{bucket}\n{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def storage_from_settings(settings: Settings | None = None) -> ObjectStorage:
    """The storage backend the settings ask for. An S3 backend is made once per process and set of S3
    settings and then reused (a boto3 client costs ~8 ms to create, once per task before; clients are
    thread-safe, and a forked process makes its own rather than share its parent's connections)."""
    settings = settings or get_settings()
    if settings.storage_backend == "s3":
        secret = settings.s3_secret_access_key
        return _s3_storage(os.getpid(), settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region,
                           settings.s3_access_key_id, secret.get_secret_value() if secret else None,
                           settings.s3_public_endpoint_url)
    return LocalStorage(settings.resolved_storage_root, settings.s3_bucket,
                        settings.signing_key.get_secret_value().encode())


@lru_cache(maxsize=8)
def _s3_storage(pid: int, bucket: str, endpoint_url: str | None, region: str, access_key_id: str | None,
                secret_access_key: str | None, public_endpoint_url: str | None) -> S3Storage:
    """One :class:`S3Storage` per process (``pid``) and S3 settings."""
    return S3Storage(bucket, endpoint_url, region, access_key_id, secret_access_key, public_endpoint_url)
