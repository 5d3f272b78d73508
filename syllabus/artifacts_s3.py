"""The artifact store on S3 / MinIO, through the official `minio` SDK.

`SYLLABUS_ARTIFACT_URL=s3://bucket/prefix` with `SYLLABUS_S3_ENDPOINT`, `SYLLABUS_S3_ACCESS_KEY`,
`SYLLABUS_S3_SECRET_KEY`, `SYLLABUS_S3_SECURE`. Same guarantees as the local store:
- atomic publish: the bytes (with their sha256 as metadata, hashed first) go to a temporary key
  (`<prefix>/.tmp/<uuid>`, streamed, multipart for large files); a server-side copy then publishes them
  under the final key and the temporary object is removed. A crash before the copy leaves nothing
  under the final key (stale temporaries can be deleted at any time). Server-side copy is limited to
  5 GiB objects by S3; artifacts here are datasets and adapters, far below that;
- every object carries `x-amz-meta-sha256`; reads verify it;
- keys are validated and joined under the prefix, so they cannot escape it.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from syllabus.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactRef,
    ChecksumMismatch,
    InvalidKey,
    sha256_file,
    validate_key,
    validate_ref,
)

PART_SIZE = 16 << 20  # multipart chunk for streamed uploads of unknown or large size
_META = "sha256"
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken"}


class ArtifactAuthError(ArtifactError):
    """The S3 endpoint rejected the credentials."""


class S3ArtifactStore:
    """Objects under `s3://bucket/prefix/` on an S3-compatible server (MinIO in production)."""

    def __init__(self, url: str, endpoint: str, access_key: str, secret_key: str, secure: bool = True) -> None:
        from minio import Minio

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ArtifactError(f"invalid S3 artifact URL {url!r}: expected s3://bucket[/prefix]")
        if not endpoint:
            raise ArtifactError("SYLLABUS_S3_ENDPOINT is required for s3:// artifact URLs")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.endpoint = endpoint
        self.client = Minio(endpoint, access_key=access_key or None, secret_key=secret_key or None, secure=secure)
        self._bucket_checked = False

    # -- naming -------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        key = validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._name(key)}"

    def _key_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        root = f"{self.prefix}/" if self.prefix else ""
        name = parsed.path.lstrip("/")
        if (parsed.scheme != "s3" or parsed.netloc != self.bucket or not name.startswith(root)
                or parsed.query or parsed.fragment or parsed.params):
            raise InvalidKey(f"{uri[:80]!r} is not in this artifact store")
        return validate_key(name[len(root) :])

    # -- errors -------------------------------------------------------------------------------

    def _wrap(self, e: Exception) -> Exception:
        from minio.error import S3Error

        if isinstance(e, S3Error):
            if e.code in _AUTH_CODES:
                return ArtifactAuthError(
                    f"S3 endpoint {self.endpoint} rejected the credentials ({e.code}): "
                    "check SYLLABUS_S3_ACCESS_KEY and SYLLABUS_S3_SECRET_KEY"
                )
            if e.code in ("NoSuchKey", "NoSuchBucket"):
                return ArtifactNotFound(f"s3://{self.bucket}/{e.object_name or ''} does not exist ({e.code})")
        return ArtifactError(f"S3 endpoint {self.endpoint}: {e}")

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except Exception as e:  # noqa: BLE001 — minio raises S3Error / urllib3 errors; one clear error
            raise self._wrap(e) from None
        self._bucket_checked = True

    # -- writes -------------------------------------------------------------------------------

    def _publish(self, key: str, stream: BinaryIO, length: int, digest: str) -> ArtifactRef:
        from minio.commonconfig import CopySource

        name = self._name(key)
        self._ensure_bucket()
        tmp = f"{self.prefix + '/' if self.prefix else ''}.tmp/{uuid.uuid4().hex}"
        try:
            self.client.put_object(self.bucket, tmp, stream, length=length, part_size=PART_SIZE, metadata={_META: digest})
            # The copy carries the temporary object's metadata (checksum) with it: the publish step.
            self.client.copy_object(self.bucket, name, CopySource(self.bucket, tmp))
        except Exception as e:  # noqa: BLE001 — mapped to a precise ArtifactError
            raise self._wrap(e) from None
        finally:
            try:
                self.client.remove_object(self.bucket, tmp)
            except Exception:  # noqa: BLE001, S110 — a stale temporary is harmless and never read
                pass
        return ArtifactRef(uri=self.uri_for(key), sha256=digest, size_bytes=length)

    def put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        return self._publish(key, io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path) -> ArtifactRef:
        digest = sha256_file(Path(path))
        with open(path, "rb") as f:
            return self._publish(key, f, Path(path).stat().st_size, digest)

    def delete(self, key: str) -> None:
        """Remove the object under key (S3 deletes are idempotent: an absent key is no error)."""
        name = self._name(key)
        try:
            self.client.remove_object(self.bucket, name)
        except Exception as e:  # noqa: BLE001 — mapped to a precise ArtifactError
            raise self._wrap(e) from None

    # -- reads --------------------------------------------------------------------------------

    def stat(self, key: str) -> ArtifactRef | None:
        from minio.error import S3Error

        name = self._name(key)
        try:
            st = self.client.stat_object(self.bucket, name)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return None
            raise self._wrap(e) from None
        except Exception as e:  # noqa: BLE001 — connection errors become a clear ArtifactError
            raise self._wrap(e) from None
        digest = (st.metadata or {}).get(f"x-amz-meta-{_META}") or ""
        if not digest:
            return None  # not published by us (no checksum): treat as absent
        return ArtifactRef(uri=self.uri_for(key), sha256=digest, size_bytes=st.size)

    def _read(self, ref: ArtifactRef, sink) -> None:
        validate_ref(ref)
        name = self._name(self._key_of(ref.uri))
        try:
            st = self.client.stat_object(self.bucket, name)
            resp = self.client.get_object(self.bucket, name)
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e) from None
        h = hashlib.sha256()
        try:
            for chunk in resp.stream(1 << 20):
                h.update(chunk)
                sink(chunk)
        finally:
            resp.close()
            resp.release_conn()
        digest = h.hexdigest()
        stored = (st.metadata or {}).get(f"x-amz-meta-{_META}", "")
        expected = ref.sha256
        if digest != expected or (stored and stored != digest):
            raise ChecksumMismatch(f"artifact {ref.uri}: sha256 {digest} != expected {expected}")

    def get_bytes(self, ref: ArtifactRef) -> bytes:
        buf = io.BytesIO()
        self._read(ref, buf.write)
        return buf.getvalue()

    def get_file(self, ref: ArtifactRef, dest: Path) -> Path:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        try:
            with open(tmp, "wb") as f:
                self._read(ref, f.write)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def list_keys(self, prefix: str = "") -> list[str]:
        """Published keys under a key prefix (temporaries excluded), for tests and tooling."""
        root = f"{self.prefix}/" if self.prefix else ""
        try:
            objs = self.client.list_objects(self.bucket, prefix=root + prefix, recursive=True)
            names = [o.object_name[len(root) :] for o in objs]
        except Exception as e:  # noqa: BLE001
            raise self._wrap(e) from None
        return sorted(n for n in names if not n.startswith(".tmp/"))
