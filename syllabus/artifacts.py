"""Artifact store: immutable, checksummed objects addressed by key.

Writes are atomic (temporary file, then publish by rename), every object carries its sha256 and
reads verify it, and keys cannot escape the store's root. `open_store(url)` picks the
implementation from the URL scheme; `file://` is the embedded default.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from syllabus.config import Config

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactRef:
    """A published object: its URI, hex sha256 and size. Mirrors `syllabus.common.v1.ArtifactRef`."""

    uri: str
    sha256: str
    size_bytes: int


class ArtifactError(Exception):
    """Base class of artifact store errors."""


class InvalidKey(ArtifactError):
    """The key is empty, absolute, malformed or escapes the store root; or a reference's sha256 is not
    64 lower-case hex. `part` names the field of the reference that is wrong ("uri" or "sha256")."""

    def __init__(self, message: str, part: str = "uri") -> None:
        super().__init__(message)
        self.part = part


class ArtifactNotFound(ArtifactError):
    """No object is published under the key."""


class ChecksumMismatch(ArtifactError):
    """The object's bytes do not hash to the expected sha256."""


MAX_KEY_CHARS = 512
MAX_SEGMENT_CHARS = 200  # well below NAME_MAX (255): a key never fails with "file name too long"
JOB_PREFIX = "jobs/"  # services write only under a job's prefix: jobs/<job id>/...
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _show(text: str, limit: int = 60) -> str:
    """A bounded repr of client input for error messages (never echo a 1 MB key)."""
    return repr(text[:limit]) + (f"... ({len(text)} chars)" if len(text) > limit else "")


def validate_key(key: str) -> str:
    """Return the key, or raise InvalidKey: it must be a relative path of at most MAX_KEY_CHARS
    characters from `[A-Za-z0-9._/-]`, with non-empty segments of at most MAX_SEGMENT_CHARS, no `.`
    or `..` segment and no reserved name (temporaries, checksum sidecars)."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("invalid artifact key: must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidKey(f"invalid artifact key {_show(key)}: longer than {MAX_KEY_CHARS} characters")
    if not _KEY_CHARS.fullmatch(key):
        raise InvalidKey(f"invalid artifact key {_show(key)}: use only letters, digits, '.', '_', '-' and '/'")
    if key.startswith("/"):
        raise InvalidKey(f"invalid artifact key {_show(key)}: must be a relative path")
    parts = key.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise InvalidKey(f"invalid artifact key {_show(key)}: empty, '.' and '..' segments are not allowed")
    if any(len(p) > MAX_SEGMENT_CHARS for p in parts):
        raise InvalidKey(f"invalid artifact key {_show(key)}: a segment is longer than {MAX_SEGMENT_CHARS} characters")
    if parts[-1].startswith(".tmp-") or parts[-1].endswith(".sha256"):
        raise InvalidKey(f"invalid artifact key {_show(key)}: reserved name")
    return key


def validate_output_key(key: str) -> str:
    """An output key a service may write: a valid key under a job prefix (`jobs/<job id>/...`)."""
    key = validate_key(key)
    parts = key.split("/")
    if parts[0] != JOB_PREFIX.rstrip("/") or len(parts) < 3:
        raise InvalidKey(f"invalid output key {_show(key)}: services write only under a job prefix, jobs/<job id>/...")
    return key


def validate_sha256(sha256: str) -> str:
    """A reference's checksum: exactly 64 lower-case hex digits (raises InvalidKey, part "sha256")."""
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise InvalidKey(f"must be 64 lower-case hex digits, got {_show(str(sha256), 20)}", part="sha256")
    return sha256


def validate_ref(ref: ArtifactRef) -> ArtifactRef:
    """Check a reference's form (sha256; the URI is checked against the store on read)."""
    validate_sha256(ref.sha256)
    if not ref.uri or len(ref.uri) > 4 * MAX_KEY_CHARS:
        raise InvalidKey(f"invalid artifact URI {_show(ref.uri)}")
    return ref


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArtifactStore(Protocol):
    """What services and activities need from object storage."""

    def uri_for(self, key: str) -> str: ...

    def put_bytes(self, key: str, data: bytes) -> ArtifactRef: ...

    def put_file(self, key: str, path: Path) -> ArtifactRef: ...

    def stat(self, key: str) -> ArtifactRef | None:
        """The published object under key, or None: how retried steps find their output."""
        ...

    def get_bytes(self, ref: ArtifactRef) -> bytes: ...

    def get_file(self, ref: ArtifactRef, dest: Path) -> Path: ...

    def list_keys(self, prefix: str = "") -> list[str]: ...

    def delete(self, key: str) -> None:
        """Remove the object under key, if any: only for scratch objects (a finished run's checkpoint);
        published outputs are never deleted."""
        ...


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore:
    """Objects as files under a root directory; `<key>.sha256` holds each object's checksum."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri_for(self, key: str) -> str:
        return (self.root / validate_key(key)).as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _key_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise InvalidKey(f"{_show(uri)} is not in this artifact store")
        path = Path(unquote(parsed.path))
        try:
            return validate_key(path.relative_to(self.root).as_posix())
        except ValueError:
            raise InvalidKey(f"{_show(uri)} is not in this artifact store") from None

    def _check_free(self, key: str) -> Path:
        """The path of an output key, or InvalidKey if the key names a directory-like prefix of other
        artifacts, or lies under an existing object."""
        path = self._path(key)
        if path.is_dir():
            raise InvalidKey(f"invalid output key {_show(key)}: a prefix of other artifacts, not an object name")
        for parent in path.relative_to(self.root).parents:
            if parent.parts and (self.root / parent).is_file():
                raise InvalidKey(f"invalid output key {_show(key)}: {_show(parent.as_posix())} is an artifact, not a prefix")
        return path

    def _publish(self, key: str, write) -> ArtifactRef:  # write(fileobj) -> sha256 hex
        path = self._check_free(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                digest = write(f)
                f.flush()
                os.fsync(f.fileno())
            size = os.path.getsize(tmp)
            sidecar = path.with_name(path.name + ".sha256")
            # A temp name of its own: concurrent writers of one key (a retried request racing the
            # first) must not rename each other's checksum away.
            sfd, sidecar_tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".sha256", dir=path.parent)
            with os.fdopen(sfd, "w") as sf:
                sf.write(f"{digest} {size}\n")
                sf.flush()
                os.fsync(sf.fileno())
            # Checksum first, data last: once the data file is visible its checksum is too. A power
            # loss between the two renames leaves a checksum that does not describe the data: `stat`
            # sees the sizes disagree and calls the object absent, so the step publishes it again.
            os.replace(sidecar_tmp, sidecar)
            os.replace(tmp, path)
            _fsync_dir(path.parent)  # the renames themselves survive a power loss
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            if "sidecar_tmp" in locals():
                Path(sidecar_tmp).unlink(missing_ok=True)
            raise
        return ArtifactRef(uri=path.as_uri(), sha256=digest, size_bytes=size)

    def put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        def write(f):
            f.write(data)
            return hashlib.sha256(data).hexdigest()

        return self._publish(key, write)

    def put_file(self, key: str, path: Path) -> ArtifactRef:
        def write(f):
            h = hashlib.sha256()
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    f.write(chunk)
            return h.hexdigest()

        return self._publish(key, write)

    def stat(self, key: str) -> ArtifactRef | None:
        path = self._check_free(key)
        sidecar = path.with_name(path.name + ".sha256")
        if not path.is_file() or not sidecar.is_file():
            return None
        try:
            digest, size = sidecar.read_text().split()
            if int(size) != path.stat().st_size:
                return None  # a torn publish (see _publish): absent until published again
        except (ValueError, OSError):
            return None
        return ArtifactRef(uri=path.as_uri(), sha256=digest, size_bytes=int(size))

    def get_bytes(self, ref: ArtifactRef) -> bytes:
        validate_ref(ref)
        key = self._key_of(ref.uri)
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(f"artifact {key} does not exist")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise ChecksumMismatch(f"artifact {key}: sha256 {digest} != expected {ref.sha256}")
        return data

    def get_file(self, ref: ArtifactRef, dest: Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.get_bytes(ref))
        return dest

    def delete(self, key: str) -> None:
        path = self._check_free(key)
        path.unlink(missing_ok=True)  # the data first: without it the object is absent (`stat`)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Published keys under a key prefix (temporaries and checksum files excluded)."""
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-") and not p.name.endswith(".sha256")
            and p.relative_to(self.root).as_posix().startswith(prefix)
        )


def open_store(url: str, config: Config | None = None) -> ArtifactStore:
    """Open the store named by a URL: `file:///abs/dir`, a plain directory, or `s3://bucket/prefix`
    (endpoint and credentials from `config`, default: the SYLLABUS_S3_* env vars)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalArtifactStore(Path(unquote(parsed.path) if parsed.scheme else url))
    if parsed.scheme == "s3":
        from syllabus.artifacts_s3 import S3ArtifactStore
        from syllabus.config import load_config

        c = config or load_config()
        return S3ArtifactStore(url, c.s3_endpoint, c.s3_access_key, c.s3_secret_key, c.s3_secure)
    raise ArtifactError(f"unsupported artifact URL {url!r}: expected file:///path or s3://bucket/prefix")


def generate_stats_key(examples_key: str) -> str:
    """Where the teacher keeps a Generate run's counts (its response without the examples): beside
    the examples, published before them, so a retry that finds the examples finds the counts too."""
    return examples_key + ".stats.json"


def training_metrics_key(adapter_key: str) -> str:
    """Where the trainer keeps a finished run's step count and loss curve: beside its adapter,
    published before it, so an adapter in the store always comes with its true metrics."""
    return adapter_key + ".metrics.json"
