"""Object storage: S3 through a moto server and a scripted fake S3, and a local directory."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import boto3
import pytest

from lifecycle.clients.storage import (
    ATTEMPTS,
    Inventory,
    LocalStorage,
    ObjectStorage,
    S3Storage,
    StorageError,
    open_storage,
)
from lifecycle.errors import ConfigError, DependencyDown
from tests.support.http_server import Reply, ScriptedHttpServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
FOLDER_SIZE = 2_500

INVALID_PREFIXES = [
    "",
    "/",
    "users/u1",
    "/users/u1/",
    "users/../u1/",
    "../",
    "users/./u1/",
    "users//u1/",
    "users\\u1/",
]
INVALID_KEYS = ["", "users/u1/", "/users/u1/a", "../a", "users/../../a", "users\\u1\\a", "a//b"]


@pytest.fixture(params=["s3", "local"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStorage:
    """The same behaviour is required of both backends, each built from its URL."""
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("moto_endpoint")
        return open_storage(f"s3://{bucket}", endpoint_url=endpoint)
    return open_storage((tmp_path / "store").as_uri())


def put_many(storage: ObjectStorage, keys: list[str]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: storage.put(key, b"x"), keys))


def test_delete_prefix_removes_a_large_folder_and_nothing_beside_it(storage: ObjectStorage) -> None:
    folder = [f"users/u1/files/{i:05d}.bin" for i in range(FOLDER_SIZE)]
    put_many(storage, [*folder, "users/u1/profile.json"])
    storage.put("users/u10/profile.json", b"sibling")
    storage.put("users/u1-archive/old.json", b"sibling")
    assert storage.count_prefix("users/u1/") == FOLDER_SIZE + 1

    assert storage.delete_prefix("users/u1/") == FOLDER_SIZE + 1

    assert storage.count_prefix("users/u1/") == 0
    assert storage.count_prefix("users/u10/") == 1
    assert storage.count_prefix("users/u1-archive/") == 1
    assert storage.delete_prefix("users/u1/") == 0  # already gone is success


def test_missing_folder_counts_and_deletes_zero(storage: ObjectStorage) -> None:
    assert storage.count_prefix("users/nobody/") == 0
    assert storage.delete_prefix("users/nobody/") == 0


def test_put_replaces_an_object(storage: ObjectStorage) -> None:
    storage.put("users/u1/a.txt", b"one")
    storage.put("users/u1/a.txt", b"two")
    assert storage.count_prefix("users/u1/") == 1


@pytest.mark.parametrize("prefix", INVALID_PREFIXES)
def test_invalid_prefixes_are_refused(storage: ObjectStorage, prefix: str) -> None:
    storage.put("users/u1/a.txt", b"kept")
    with pytest.raises(StorageError):
        storage.delete_prefix(prefix)
    with pytest.raises(StorageError):
        storage.count_prefix(prefix)
    assert storage.count_prefix("users/u1/") == 1


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_refused(storage: ObjectStorage, key: str) -> None:
    with pytest.raises(StorageError):
        storage.put(key, b"x")


def test_s3_base_prefix_from_url_is_honoured(moto_endpoint: str, s3_bucket: str) -> None:
    raw = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    raw.put_object(Bucket=s3_bucket, Key="users/u1/outside.txt", Body=b"not ours")
    storage = open_storage(f"s3://{s3_bucket}/tenants/a", endpoint_url=moto_endpoint)

    storage.put("users/u1/inside.txt", b"ours")

    listed = raw.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert sorted(item["Key"] for item in listed) == [
        "tenants/a/users/u1/inside.txt",
        "users/u1/outside.txt",
    ]
    assert storage.count_prefix("users/u1/") == 1
    assert storage.delete_prefix("users/u1/") == 1
    listed = raw.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["users/u1/outside.txt"]
    raw.close()


def test_s3_storage_refuses_an_invalid_base_prefix() -> None:
    client = boto3.client("s3", region_name="us-east-1")
    with pytest.raises(StorageError):
        S3Storage(client=client, bucket="b", base_prefix="tenants/../other")
    client.close()


@dataclass
class FakeS3:
    """Scripted S3: lists ``count`` keys under any prefix and answers DeleteObjects."""

    count: int
    error_code: str | None = None
    delete_requests: list[ElementTree.Element] = field(default_factory=list)


class FakeS3Server(ThreadingHTTPServer):
    fake: FakeS3


class FakeS3Handler(BaseHTTPRequestHandler):
    server: FakeS3Server

    def do_GET(self) -> None:  # ListObjectsV2, path-style: /bucket?list-type=2&prefix=...
        prefix = parse_qs(urlsplit(self.path).query).get("prefix", [""])[0]
        contents = "".join(
            f"<Contents><Key>{escape(prefix)}{i}</Key><Size>1</Size></Contents>"
            for i in range(self.server.fake.count)
        )
        self._reply(
            f"<ListBucketResult xmlns='{S3_NS}'><Name>bucket</Name>"
            f"<Prefix>{escape(prefix)}</Prefix><KeyCount>{self.server.fake.count}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}"
            "</ListBucketResult>"
        )

    def do_POST(self) -> None:  # DeleteObjects: /bucket?delete
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ElementTree.fromstring(body)
        self.server.fake.delete_requests.append(request)
        errors = ""
        if self.server.fake.error_code:
            key = request.findtext(f"{{{S3_NS}}}Object/{{{S3_NS}}}Key")
            errors = (
                f"<Error><Key>{escape(key or '')}</Key><Code>{self.server.fake.error_code}</Code>"
                "<Message>Access Denied</Message></Error>"
            )
        self._reply(f"<DeleteResult xmlns='{S3_NS}'>{errors}</DeleteResult>")

    def _reply(self, xml: str) -> None:
        data = f"<?xml version='1.0' encoding='UTF-8'?>{xml}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


@pytest.fixture
def fake_s3(aws_credentials: None) -> Iterator[tuple[FakeS3, str]]:
    """A scripted fake S3 on 127.0.0.1 and its endpoint URL."""
    server = FakeS3Server(("127.0.0.1", 0), FakeS3Handler)
    server.fake = FakeS3(count=1)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_delete_errors_reported_by_s3_raise_without_naming_keys(
    fake_s3: tuple[FakeS3, str],
) -> None:
    fake, endpoint = fake_s3
    fake.error_code = "AccessDenied"
    storage = open_storage("s3://bucket/tenant", endpoint_url=endpoint)

    with pytest.raises(StorageError) as raised:
        storage.delete_prefix("users/u1/")

    message = str(raised.value)
    assert "1 of 1" in message and "AccessDenied" in message
    assert "users/u1" not in message
    [request] = fake.delete_requests
    assert request.findtext(f"{{{S3_NS}}}Quiet") == "true"
    assert request.findtext(f"{{{S3_NS}}}Object/{{{S3_NS}}}Key") == "tenant/users/u1/0"


def test_delete_objects_is_sent_in_chunks_of_at_most_1000(fake_s3: tuple[FakeS3, str]) -> None:
    # Real S3 pages hold at most 1,000 keys; some compatible stores return more per page.
    fake, endpoint = fake_s3
    fake.count = 2_345
    storage = open_storage("s3://bucket", endpoint_url=endpoint)

    assert storage.delete_prefix("users/u1/") == 2_345

    sizes = [len(request.findall(f"{{{S3_NS}}}Object")) for request in fake.delete_requests]
    assert sizes == [1000, 1000, 345]


def test_local_storage_refuses_paths_leading_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    (outside / "users" / "u1").mkdir(parents=True)
    (outside / "users" / "u1" / "secret").write_bytes(b"keep")
    root.mkdir()
    (root / "users").symlink_to(outside / "users", target_is_directory=True)
    storage = LocalStorage(root=root)

    with pytest.raises(StorageError):
        storage.delete_prefix("users/u1/")
    with pytest.raises(StorageError):
        storage.put("users/u1/new", b"x")
    with pytest.raises(StorageError):
        storage.put("../outside/users/u1/new", b"x")
    assert sorted(p.name for p in (outside / "users" / "u1").iterdir()) == ["secret"]


def test_local_storage_writes_files_and_removes_empty_folders(tmp_path: Path) -> None:
    root = tmp_path / "with space"
    storage = open_storage(root.as_uri())
    storage.put("users/u1/deep/a.txt", b"hello")
    storage.put("users/u10/b.txt", b"sibling")

    assert (root / "users" / "u1" / "deep" / "a.txt").read_bytes() == b"hello"
    assert storage.delete_prefix("users/u1/") == 1
    assert not (root / "users" / "u1").exists()
    assert sorted(p.name for p in (root / "users").iterdir()) == ["u10"]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/bucket",
        "s3://",
        "s3:///prefix",
        "s3://bucket/prefix?versionId=1",
        "file://host/srv/storage",
        "file:relative/path",
        "/srv/storage",
        "",
    ],
)
def test_open_storage_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket/optional/prefix or file:///absolute/path"):
        open_storage(url)


# --- versions, Object Lock, pre-flight checks, a store that stops answering -------------------


@pytest.fixture
def s3(moto_endpoint: str) -> Iterator[S3Client]:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    yield client
    client.close()


def versions_under(s3: S3Client, bucket: str, prefix: str) -> int:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    return len(listed.get("Versions", [])) + len(listed.get("DeleteMarkers", []))


def test_versioned_bucket_loses_every_version_and_delete_marker(
    s3: S3Client, moto_endpoint: str, s3_bucket: str
) -> None:
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    storage = open_storage(f"s3://{s3_bucket}", endpoint_url=moto_endpoint)
    for body in (b"v1", b"v2", b"v3"):
        storage.put("users/u1/a.txt", body)
    storage.put("users/u1/b.txt", b"only")
    s3.delete_object(Bucket=s3_bucket, Key="users/u1/b.txt")  # a delete marker on top
    storage.put("users/u10/keep.txt", b"neighbour")

    assert storage.inventory("users/u1/") == Inventory(objects=2, versions=5)
    assert storage.delete_prefix("users/u1/") == 5

    assert versions_under(s3, s3_bucket, "users/u1/") == 0
    assert versions_under(s3, s3_bucket, "users/u10/") == 1


def test_unversioned_bucket_inventory_counts_objects(moto_endpoint: str, s3_bucket: str) -> None:
    storage = open_storage(f"s3://{s3_bucket}", endpoint_url=moto_endpoint)
    storage.put("users/u1/a.txt", b"x")
    storage.put("users/u1/a.txt", b"y")
    assert storage.inventory("users/u1/") == Inventory(objects=1, versions=1)


def test_object_lock_legal_hold_is_reported_not_claimed_deleted(
    s3: S3Client, moto_endpoint: str
) -> None:
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    version = s3.put_object(Bucket=bucket, Key="users/u1/held.txt", Body=b"x")["VersionId"]
    s3.put_object_legal_hold(
        Bucket=bucket, Key="users/u1/held.txt", VersionId=version, LegalHold={"Status": "ON"}
    )
    storage = open_storage(f"s3://{bucket}", endpoint_url=moto_endpoint)

    with pytest.raises(StorageError, match="Object Lock retention or a legal hold"):
        storage.delete_prefix("users/u1/")
    assert versions_under(s3, bucket, "users/u1/") == 1

    s3.put_object_legal_hold(
        Bucket=bucket, Key="users/u1/held.txt", VersionId=version, LegalHold={"Status": "OFF"}
    )
    assert storage.delete_prefix("users/u1/") == 1


def test_check_passes_for_a_bucket_and_a_folder_that_exist(
    moto_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    open_storage(f"s3://{s3_bucket}/prefix", endpoint_url=moto_endpoint).check()
    open_storage(tmp_path.as_uri()).check()


def test_check_refuses_a_missing_bucket_and_a_missing_folder(
    moto_endpoint: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        open_storage("s3://no-such-bucket", endpoint_url=moto_endpoint).check()
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        open_storage((tmp_path / "missing").as_uri()).check()


def test_s3_that_never_answers_costs_bounded_time(http_server: ScriptedHttpServer) -> None:
    http_server.default = Reply(hang=True)
    storage = open_storage("s3://bucket", endpoint_url=http_server.url, timeout_seconds=0.3)
    with pytest.raises(DependencyDown, match="S3 bucket 'bucket' is not answering"):
        storage.check()
    # Each try waits 0.3 s; botocore's S3 region check adds one more HEAD after the last.
    assert 1 <= len(http_server.received()) <= ATTEMPTS + 1
