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
    head = storage.head("inbox/a/one.png")
    assert (head.etag, head.size, head.version_id) == (info.etag, info.size, info.version_id)  # put's own answer
    assert abs((head.last_modified - info.last_modified).total_seconds()) <= 2
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


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../up.png", "a/../../b", "a//b", "./a", "a\\b", "a/..",
                                 "inbox/x.png\n2026-12-01 INFO forged", "inbox/\r.png", "inbox/\x1b[2J.png",
                                 "inbox/\x00.png", "inbox/\t.png", "inbox/\x7f.png"])
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


def test_s3_presigned_url_names_the_public_endpoint(s3_endpoint: str) -> None:
    """Issue 17.10: links name the host browsers reach (HEP2_S3_PUBLIC_ENDPOINT_URL), not the internal one;
    here "localhost" stands for the public name of the same server, so the signed link must still work."""
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    store = S3Storage("presign-public", s3_endpoint, access_key_id="testing", secret_access_key="testing",
                      public_endpoint_url=public)
    store.ensure_bucket()
    store.put("overlays/1.png", b"overlay bytes")
    url = store.presigned_url("overlays/1.png", expires_s=60)
    assert url.startswith(public + "/presign-public/overlays/1.png?") and "127.0.0.1" not in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"overlay bytes"


def test_fetch_reads_the_version_asked_for(storage: LocalStorage | S3Storage) -> None:
    """Issue 17.1: fetch returns the ETag of the very bytes read, and a named version on a versioned bucket."""
    first = storage.put("inbox/v.png", b"version one")
    fetched = storage.fetch("inbox/v.png")
    assert (fetched.data, fetched.etag) == (b"version one", first.etag)
    if isinstance(storage, S3Storage):
        storage.client.put_bucket_versioning(Bucket=storage.bucket, VersioningConfiguration={"Status": "Enabled"})
        one = storage.put("inbox/w.png", b"one")
        storage.put("inbox/w.png", b"two")
        assert one.version_id and storage.fetch("inbox/w.png", one.version_id).data == b"one"
        assert storage.fetch("inbox/w.png").data == b"two"
        with pytest.raises(ObjectNotFoundError):
            storage.fetch("inbox/w.png", "no-such-version")
    else:
        with pytest.raises(ObjectNotFoundError):  # a folder keeps no versions
            storage.fetch("inbox/v.png", "some-version")


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


def test_s3_storage_is_made_once_per_process_and_settings(s3_endpoint: str) -> None:
    """storage_from_settings reuses its S3 client (one per task cost ~8 ms) for the same settings in the same
    process; other settings, or a forked child process, get their own."""
    import os

    from hep2.settings import Settings
    from hep2.storage import storage_from_settings

    settings = Settings(storage_backend="s3", s3_endpoint_url=s3_endpoint, s3_bucket="reuse-test",
                        s3_access_key_id="testing", s3_secret_access_key="testing")
    first = storage_from_settings(settings)
    assert isinstance(first, S3Storage) and storage_from_settings(settings) is first
    assert storage_from_settings(settings.model_copy(update={"s3_bucket": "other-bucket"})) is not first
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports whether it got its parent's object
        os.write(write, b"same" if storage_from_settings(settings) is first else b"own")
        os._exit(0)
    os.waitpid(child, 0)
    assert os.read(read, 8) == b"own"
