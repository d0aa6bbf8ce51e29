"""A local S3 server for the tests that read or reference a sweep on S3."""

import uuid

import pytest


@pytest.fixture
def s3_bucket(monkeypatch):
    """A new bucket on a local S3 server (moto), reached through AWS_ENDPOINT_URL: yields (boto3 client, its name).

    Moto keeps its buckets in the process, so each test gets its own. Write into it with the client (or pyarrow
    with `?allow_delayed_open=true`: moto 5.2.1 answers pyarrow's multipart uploads wrongly, getmoto/moto#10055)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client, bucket = boto3.client("s3"), f"bkt-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    server.stop()
