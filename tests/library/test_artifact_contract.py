"""One contract, both stores: the local directory and the MinIO code path (minio SDK against an
S3-compatible server on loopback)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from syllabus.artifacts import ArtifactError, ChecksumMismatch, InvalidKey, LocalArtifactStore
from syllabus.artifacts_s3 import ArtifactAuthError, S3ArtifactStore

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    s3 = request.getfixturevalue("s3_server")
    return S3ArtifactStore(f"s3://syllabus-test/run-{uuid.uuid4().hex[:8]}", s3["endpoint"], s3["access_key"], s3["secret_key"], secure=False)


def _corrupt(store, key: str, data: bytes) -> None:
    """Overwrite an object's bytes behind the store's back, keeping its recorded checksum."""
    if isinstance(store, LocalArtifactStore):
        (store.root / key).write_bytes(data)
    else:
        import io

        name = store._name(key)
        meta = store.client.stat_object(store.bucket, name).metadata
        store.client.put_object(store.bucket, name, io.BytesIO(data), len(data), metadata={"sha256": meta["x-amz-meta-sha256"]})


def test_round_trip(any_store, tmp_path: Path) -> None:
    ref = any_store.put_bytes("jobs/j/a.jsonl", b'{"a": 1}\n')
    assert any_store.get_bytes(ref) == b'{"a": 1}\n'
    assert any_store.stat("jobs/j/a.jsonl") == ref
    assert any_store.stat("jobs/j/none.jsonl") is None
    src = tmp_path / "big.bin"
    src.write_bytes(uuid.uuid4().bytes * (40 << 16))  # 40 MiB: several multipart parts on S3
    big = any_store.put_file("jobs/j/big.bin", src)
    assert big.size_bytes == src.stat().st_size
    assert any_store.get_file(big, tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert any_store.list_keys("jobs/j/") == ["jobs/j/a.jsonl", "jobs/j/big.bin"]


def test_checksum_mismatch_detected(any_store) -> None:
    ref = any_store.put_bytes("x.txt", b"original")
    _corrupt(any_store, "x.txt", b"tampered")
    with pytest.raises(ChecksumMismatch):
        any_store.get_bytes(ref)
    good = any_store.put_bytes("y.txt", b"fine")
    with pytest.raises(ChecksumMismatch):
        any_store.get_bytes(dataclasses.replace(good, sha256="f" * 64))


def test_crash_between_write_and_publish_leaves_nothing_readable(any_store, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(any_store, LocalArtifactStore):
        import os

        real = os.replace

        def crash(src, dst):
            if str(dst).endswith(".sha256"):
                return real(src, dst)
            raise OSError("crash before publish")

        monkeypatch.setattr(os, "replace", crash)
    else:
        def crash(*args, **kwargs):
            raise OSError("crash before publish")

        monkeypatch.setattr(any_store.client, "copy_object", crash)
    with pytest.raises((OSError, ArtifactError)):
        any_store.put_bytes("jobs/j/out.jsonl", b"half")
    monkeypatch.undo()
    assert any_store.stat("jobs/j/out.jsonl") is None
    assert any_store.list_keys() == []


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "", "a//b"])
def test_prefix_escape_rejected(any_store, key: str) -> None:
    with pytest.raises(InvalidKey):
        any_store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        any_store.stat(key)


def test_wrong_credentials_give_a_clear_error(s3_server) -> None:
    bad = S3ArtifactStore("s3://syllabus-test/p", s3_server["endpoint"], s3_server["access_key"], "wrong-secret", secure=False)
    with pytest.raises(ArtifactAuthError, match="rejected the credentials.*SYLLABUS_S3_SECRET_KEY"):
        bad.put_bytes("a.txt", b"x")
    with pytest.raises(ArtifactAuthError):
        bad.stat("a.txt")


def test_open_store_s3_from_config(s3_server) -> None:
    from syllabus.artifacts import open_store
    from syllabus.config import Config

    cfg = Config(s3_endpoint=s3_server["endpoint"], s3_access_key=s3_server["access_key"],
                 s3_secret_key=s3_server["secret_key"], s3_secure=False)
    store = open_store("s3://syllabus-test/via-config", cfg)
    ref = store.put_bytes("k.txt", b"v")
    assert ref.uri == "s3://syllabus-test/via-config/k.txt"
    assert store.get_bytes(ref) == b"v"


def test_delete_removes_an_object_and_ignores_an_absent_one(any_store) -> None:
    ref = any_store.put_bytes("jobs/j/run.ckpt", b"state")
    any_store.put_bytes("jobs/j/kept.tar", b"adapter")
    any_store.delete("jobs/j/run.ckpt")
    assert any_store.stat("jobs/j/run.ckpt") is None
    with pytest.raises(ArtifactError):
        any_store.get_bytes(ref)
    any_store.delete("jobs/j/run.ckpt")  # again: nothing there, no error
    assert any_store.list_keys("jobs/j/") == ["jobs/j/kept.tar"]
    with pytest.raises(InvalidKey):
        any_store.delete("../outside")
