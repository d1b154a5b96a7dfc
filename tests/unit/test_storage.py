"""Both storage backends behave alike; keys are validated before any I/O."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hep2.storage import InvalidKeyError, LocalStorage, ObjectNotFoundError, S3Storage, validate_key


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStorage | S3Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path, "bucket", b"secret")
        return
    endpoint = request.getfixturevalue("s3_endpoint")
    store = S3Storage(f"unit-{tmp_path.name.lower().replace('_', '-')[:40]}", endpoint, access_key_id="testing",
                      secret_access_key="testing")
    store.ensure_bucket()
    yield store


def test_put_get_head_list(storage: LocalStorage | S3Storage) -> None:
    info = storage.put("inbox/a/one.png", b"first")
    storage.put("inbox/b/two.png", b"second")
    storage.put("models/x.bin", b"third")

    assert storage.get("inbox/a/one.png") == b"first"
    assert info.size == 5 and info.etag == hashlib.md5(b"first").hexdigest()  # S3's single-part ETag
    assert storage.head("inbox/a/one.png").etag == info.etag
    assert [o.key for o in storage.list("inbox/")] == ["inbox/a/one.png", "inbox/b/two.png"]
    assert len(list(storage.list())) == 3


def test_overwrite_changes_etag(storage: LocalStorage | S3Storage) -> None:
    first = storage.put("inbox/x.png", b"v1")
    second = storage.put("inbox/x.png", b"v2")
    assert first.etag != second.etag and storage.get("inbox/x.png") == b"v2"


def test_missing_object(storage: LocalStorage | S3Storage) -> None:
    with pytest.raises(ObjectNotFoundError):
        storage.get("inbox/none.png")
    with pytest.raises(ObjectNotFoundError):
        storage.head("inbox/none.png")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../up.png", "a/../../b", "a//b", "./a", "a\\b", "a/.."])
def test_unsafe_keys_are_rejected(storage: LocalStorage | S3Storage, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        storage.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        validate_key(key)


def test_s3_presigned_url_downloads_over_http(s3_endpoint: str) -> None:
    store = S3Storage("presign-test", s3_endpoint, access_key_id="testing", secret_access_key="testing")
    store.ensure_bucket()
    store.put("overlays/1.png", b"overlay bytes")
    with urllib.request.urlopen(store.presigned_url("overlays/1.png", expires_s=60), timeout=10) as resp:
        assert resp.read() == b"overlay bytes"


def test_local_presigned_url_is_signed_and_expires(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, "bucket", b"secret")
    store.put("overlays/1.png", b"x")
    url = store.presigned_url("overlays/1.png", expires_s=60)
    query = dict(part.split("=") for part in url.split("?", 1)[1].split("&"))
    assert store.verify_signature("overlays/1.png", int(query["expires"]), query["signature"])
    assert not store.verify_signature("overlays/2.png", int(query["expires"]), query["signature"])
    assert not store.verify_signature("overlays/1.png", 1, query["signature"])  # long expired
    other = LocalStorage(tmp_path, "bucket", b"another key")
    assert not other.verify_signature("overlays/1.png", int(query["expires"]), query["signature"])


def test_local_listing_hashes_each_object_version_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStorage(tmp_path, "bucket", b"secret")
    store.put("inbox/a.png", b"first")
    first = [o.etag for o in store.list("inbox/")]
    reads: list[Path] = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    assert [o.etag for o in store.list("inbox/")] == first and reads == []  # unchanged: not read again
    store.put("inbox/a.png", b"other")  # same size, new content
    assert [o.etag for o in store.list("inbox/")] == [hashlib.md5(b"other").hexdigest()]
