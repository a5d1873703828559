"""Pytest plugin: a moto S3 server on 127.0.0.1 for the session, and a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Unset for the session so a developer's real profile or session token is never used.
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
}


@pytest.fixture(scope="session")
def aws_credentials() -> Iterator[None]:
    """Fake AWS credentials in os.environ for the session; the previous values come back after."""
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENV}
    try:
        _set_environment(FAKE_AWS_ENV)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    """Set each variable, or unset it where the value is None."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def moto_endpoint(aws_credentials: None) -> Iterator[str]:
    """URL of a moto server (all AWS services) running in a thread for the session."""
    # Port 0: the OS picks a free port at bind time, so there is no race with other processes.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> Iterator[str]:
    """Name of a new, empty bucket on the moto server; emptied and deleted after the test."""
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
            items = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            versions: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"], "VersionId": item["VersionId"]} for item in items
            ]
            if versions:
                client.delete_objects(Bucket=name, Delete={"Objects": versions, "Quiet": True})
        client.delete_bucket(Bucket=name)
        client.close()
