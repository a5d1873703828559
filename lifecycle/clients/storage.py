"""Object storage for user folders: S3 (or an S3-compatible endpoint) and a local directory.

Keys and prefixes are relative, ``/``-separated paths. A prefix names a folder and must end
with ``/``, so ``users/u1/`` never matches ``users/u10/`` and ``""`` cannot empty a bucket.
Deleting a folder that is already gone returns 0: deletes are idempotent.

On a versioned bucket a plain delete only adds a delete marker and every old version stays, so
there a folder is deleted version by version, delete markers included. A version under Object
Lock retention or a legal hold cannot be deleted: the deletion fails and says so.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lifecycle.errors import ConfigError, DependencyDown, PermanentError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

DELETE_BATCH = 1000  # DeleteObjects accepts at most 1,000 keys per request.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
ATTEMPTS = 3  # per request: a store that stops answering costs ~3 timeouts per request


class StorageError(PermanentError):
    """Raised for an invalid key or prefix, or when the store refuses to delete objects."""


@dataclass(frozen=True)
class Inventory:
    """What a folder holds: objects (distinct keys) and stored versions (with delete markers;
    the same as objects where the store keeps no versions)."""

    objects: int
    versions: int


class ObjectStorage(Protocol):
    """What the lifecycle flows need from object storage."""

    def check(self) -> None:
        """Raise :class:`ConfigError` unless the store exists and can be reached."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any existing object."""
        ...

    def count_prefix(self, prefix: str) -> int:
        """Number of objects under ``prefix``."""
        ...

    def inventory(self, prefix: str) -> Inventory:
        """Objects and versions under ``prefix``."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete everything under ``prefix`` (every version); return how many stored versions
        were deleted (0 if none)."""
        ...


def _check_path(path: str) -> None:
    # Messages describe the rule but never echo the key: keys carry user ids.
    if path.startswith("/") or "\\" in path or "\0" in path:
        raise StorageError("keys must be relative, without backslashes or NUL characters")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise StorageError("keys must not contain empty, '.' or '..' segments")


def _check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`StorageError`."""
    if not key or key.endswith("/"):
        raise StorageError("an object key must be non-empty and must not end with '/'")
    _check_path(key)
    return key


def _check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid folder prefix, else raise :class:`StorageError`."""
    if not prefix.endswith("/"):
        raise StorageError("a prefix must be non-empty and end with '/', e.g. 'users/42/'")
    _check_path(prefix[:-1])
    return prefix


class S3Storage:
    """A bucket, optionally below a base prefix that is prepended to every key."""

    def __init__(self, *, client: S3Client, bucket: str, base_prefix: str = "") -> None:
        if base_prefix and not base_prefix.endswith("/"):
            base_prefix += "/"
        self._client = client
        self._bucket = bucket
        self._base = _check_prefix(base_prefix) if base_prefix else ""

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
            self._versioned  # noqa: B018 - fetched now, so a refusal shows before any work
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404:
                raise ConfigError(f"bucket {self._bucket!r} does not exist") from None
            if status in (401, 403):
                raise ConfigError(
                    f"no access to bucket {self._bucket!r} (HTTP {status}): check the AWS "
                    "credentials and that they allow s3:ListBucket and s3:GetBucketVersioning"
                ) from None
            raise
        except BotoCoreError as exc:  # endpoint down, timeouts, no credentials
            raise DependencyDown(f"S3 bucket {self._bucket!r}", type(exc).__name__) from None

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self._bucket, Key=self._base + _check_key(key), Body=data)

    def count_prefix(self, prefix: str) -> int:
        return sum(len(page) for page in self._pages(self._base + _check_prefix(prefix)))

    def inventory(self, prefix: str) -> Inventory:
        full_prefix = self._base + _check_prefix(prefix)
        if not self._versioned:
            objects = self.count_prefix(prefix)
            return Inventory(objects=objects, versions=objects)
        keys: set[str] = set()
        versions = 0
        for page in self._version_pages(full_prefix):
            keys.update(item["Key"] for item in page)
            versions += len(page)
        return Inventory(objects=len(keys), versions=versions)

    def delete_prefix(self, prefix: str) -> int:
        # Listings continue from the last key (and version) returned, so deleting what was
        # listed skips nothing.
        full_prefix = self._base + _check_prefix(prefix)
        pages = self._version_pages(full_prefix) if self._versioned else self._pages(full_prefix)
        deleted = 0
        for page in pages:
            for start in range(0, len(page), DELETE_BATCH):
                deleted += self._delete(page[start : start + DELETE_BATCH])
        return deleted

    @cached_property
    def _versioned(self) -> bool:
        """Whether the bucket keeps versions (versioning enabled now, or suspended later)."""
        status = self._client.get_bucket_versioning(Bucket=self._bucket).get("Status")
        return status in ("Enabled", "Suspended")

    def _pages(self, full_prefix: str) -> Iterator[list[ObjectIdentifierTypeDef]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=full_prefix):
            yield [{"Key": item["Key"]} for item in page.get("Contents", [])]

    def _version_pages(self, full_prefix: str) -> Iterator[list[ObjectIdentifierTypeDef]]:
        paginator = self._client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=full_prefix):
            items = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            yield [{"Key": item["Key"], "VersionId": item["VersionId"]} for item in items]

    def _delete(self, objects: list[ObjectIdentifierTypeDef]) -> int:
        response = self._client.delete_objects(
            Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True}
        )
        errors = response.get("Errors", [])
        if errors:
            code = errors[0].get("Code", "unknown")
            locked = (
                "; a version under Object Lock retention or a legal hold stays until released"
                if code == "AccessDenied" and self._versioned
                else ""
            )
            raise StorageError(
                f"S3 refused to delete {len(errors)} of {len(objects)} objects"
                f" (first error code: {code}){locked}"
            )
        return len(objects)


class LocalStorage:
    """A directory on disk: each key is a file below ``root``."""

    def __init__(self, *, root: Path) -> None:
        self._root = root.resolve()

    def put(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old file or the new one, never a partial one."""
        path = self._path(_check_key(key))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def check(self) -> None:
        if not self._root.is_dir():
            raise ConfigError(f"storage folder {self._root} does not exist or is not a folder")

    def count_prefix(self, prefix: str) -> int:
        folder = self._path(_check_prefix(prefix))
        return sum(len(files) for _, _, files in os.walk(folder))

    def inventory(self, prefix: str) -> Inventory:
        objects = self.count_prefix(prefix)
        return Inventory(objects=objects, versions=objects)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(_check_prefix(prefix))
        deleted = 0
        for dirpath, _, files in os.walk(folder, topdown=False):
            for name in files:
                try:
                    os.unlink(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted concurrently: already gone
                deleted += 1
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
        return deleted

    def _path(self, key: str) -> Path:
        # Keys are already checked for '..'; resolving also catches symlinks leading out.
        path = (self._root / key).resolve()
        if path == self._root or not path.is_relative_to(self._root):
            raise StorageError("key resolves outside the storage root")
        return path


def open_storage(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    timeout_seconds: float = READ_TIMEOUT_SECONDS,
) -> ObjectStorage:
    """Storage for ``s3://bucket/optional/base/prefix`` or ``file:///absolute/path``.

    An S3 request waits ``timeout_seconds`` for an answer and is tried ``ATTEMPTS`` times.
    """
    parts = urlsplit(url)
    plain = not parts.query and not parts.fragment
    if plain and parts.scheme == "s3" and parts.netloc:
        config = Config(
            retries={"mode": "standard", "max_attempts": ATTEMPTS},
            connect_timeout=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds),
            read_timeout=timeout_seconds,
            # S3-compatible endpoints (MinIO, moto, LocalStack) expect path-style addressing.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return S3Storage(client=client, bucket=parts.netloc, base_prefix=parts.path.lstrip("/"))
    if plain and parts.scheme == "file" and not parts.netloc and parts.path.startswith("/"):
        return LocalStorage(root=Path(unquote(parts.path)))
    raise ValueError("storage URL must be s3://bucket/optional/prefix or file:///absolute/path")
