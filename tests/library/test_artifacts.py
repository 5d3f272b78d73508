from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from syllabus.artifacts import ArtifactNotFound, ChecksumMismatch, InvalidKey, LocalArtifactStore, open_store

pytestmark = pytest.mark.unit


def test_round_trip_and_stat(store: LocalArtifactStore) -> None:
    ref = store.put_bytes("jobs/j1/a.jsonl", b"hello\n")
    assert ref.size_bytes == 6 and len(ref.sha256) == 64
    assert store.get_bytes(ref) == b"hello\n"
    assert store.stat("jobs/j1/a.jsonl") == ref
    assert store.stat("jobs/j1/missing.jsonl") is None


def test_put_file_streams(store: LocalArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (3 << 20))
    ref = store.put_file("big.bin", src)
    assert ref.size_bytes == 3 << 20
    assert store.get_file(ref, tmp_path / "copy.bin").read_bytes() == src.read_bytes()


def test_checksum_mismatch_is_detected(store: LocalArtifactStore) -> None:
    ref = store.put_bytes("a.txt", b"abc")
    Path(store.root / "a.txt").write_bytes(b"abd")  # bit rot / tampering
    with pytest.raises(ChecksumMismatch):
        store.get_bytes(ref)
    with pytest.raises(ChecksumMismatch):
        store.get_bytes(dataclasses.replace(store.put_bytes("b.txt", b"abc"), sha256="0" * 64))


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "", "a/./b", "a\\b"])
def test_keys_cannot_escape_the_root(store: LocalArtifactStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put_bytes(key, b"x")


def test_uri_outside_the_store_is_rejected(store: LocalArtifactStore, tmp_path: Path) -> None:
    ref = store.put_bytes("a.txt", b"abc")
    outside = dataclasses.replace(ref, uri=(tmp_path / "elsewhere.txt").as_uri())
    with pytest.raises(InvalidKey):
        store.get_bytes(outside)


def _crash_on_data_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the checksum's rename through and fail the data's: a crash (or power loss) between the two."""
    import os

    real_replace = os.replace

    def replace(src, dst):
        if not str(dst).endswith(".sha256"):
            raise OSError("simulated crash between write and publish")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_before_publish_leaves_nothing_readable(store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_on_data_publish(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        store.put_bytes("jobs/j/out.jsonl", b"data")
    monkeypatch.undo()
    assert store.stat("jobs/j/out.jsonl") is None
    assert not any(p.name.startswith(".tmp-") and not p.name.endswith(".sha256") for p in (store.root / "jobs/j").iterdir())


def test_a_republish_torn_by_a_crash_reads_as_absent_until_published_again(store: LocalArtifactStore, monkeypatch) -> None:
    """The new checksum is in place, the new data is not (a power loss between the two renames): the
    key reads as absent, not as an object whose checksum fails for good, and the retry heals it."""
    store.put_bytes("jobs/j/out.jsonl", b"old")
    _crash_on_data_publish(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        store.put_bytes("jobs/j/out.jsonl", b"newer data")
    monkeypatch.undo()
    assert store.stat("jobs/j/out.jsonl") is None
    ref = store.put_bytes("jobs/j/out.jsonl", b"newer data")
    assert store.stat("jobs/j/out.jsonl") == ref and store.get_bytes(ref) == b"newer data"


def test_publishing_syncs_data_checksum_and_directory(store: LocalArtifactStore, monkeypatch) -> None:
    import os
    import stat

    synced = []
    real_fsync = os.fsync

    def record(fd):
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    store.put_bytes("jobs/j/x.jsonl", b"x")
    assert synced == ["file", "file", "dir"]  # the data, its checksum, then the renames into the directory


def test_missing_object(store: LocalArtifactStore) -> None:
    ref = store.put_bytes("a.txt", b"abc")
    (store.root / "a.txt").unlink()
    with pytest.raises(ArtifactNotFound):
        store.get_bytes(ref)


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path.as_uri()), LocalArtifactStore)
    with pytest.raises(Exception, match="unsupported artifact URL"):
        open_store("ftp://x/y")


def test_concurrent_writers_of_one_key_both_succeed(tmp_path) -> None:
    """A retried request racing the first one publishes the same object; neither writer fails."""
    from concurrent.futures import ThreadPoolExecutor

    from syllabus.artifacts import LocalArtifactStore

    store = LocalArtifactStore(tmp_path / "artifacts")
    data = b"same output\n" * 1000
    with ThreadPoolExecutor(8) as pool:
        refs = list(pool.map(lambda _: store.put_bytes("jobs/j/out.jsonl", data), range(64)))
    assert {r.sha256 for r in refs} == {store.stat("jobs/j/out.jsonl").sha256}
    assert store.get_bytes(refs[0]) == data
    assert not [p for p in (tmp_path / "artifacts" / "jobs" / "j").iterdir() if p.name.startswith(".tmp-")]
