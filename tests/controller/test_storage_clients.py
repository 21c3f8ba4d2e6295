"""The S3 client cache is keyed by all the credential material; refusals read alike.

Real boto3 clients (creating one makes no request); the S3 answers for the uniform-message test
come from botocore's Stubber (a stand-in for a server that denies).
"""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from pitcrew.storage import UNIFORM, Credentials, Storage, StorageError

EP = "http://127.0.0.1:9"


def test_same_key_id_with_another_secret_gets_its_own_client() -> None:
    """A tenant who knows another tenant's access key id must not ride that tenant's client."""
    storage = Storage(EP, "us-east-1")
    victim = storage.client(None, Credentials("AKIA1", "victim-secret", origin="a/s3"))
    intruder = storage.client(None, Credentials("AKIA1", "guess", origin="b/s3"))
    assert intruder is not victim
    assert intruder._request_signer._credentials.secret_key == "guess"
    assert storage.client(None, Credentials("AKIA1", "victim-secret", origin="a/s3")) is victim


def test_endpoint_is_part_of_the_cache_key() -> None:
    storage = Storage(EP, "us-east-1")
    creds = Credentials("k", "s", origin="a/s3")
    assert storage.client(None, creds) is not storage.client("http://127.0.0.1:10", creds)
    assert storage.client(None, creds) is storage.client(EP, creds)  # None means the default


def test_a_changed_secret_drops_its_old_clients() -> None:
    storage = Storage(EP, "us-east-1")
    old = storage.client(None, Credentials("k", "s1", origin="a/s3"))
    other_ep = storage.client("http://127.0.0.1:10", Credentials("k", "s1", origin="a/s3"))
    storage.client(None, Credentials("k", "s2", origin="a/s3"))  # the Secret was rotated
    assert old not in storage._clients.values() and other_ep not in storage._clients.values()
    # Using one Secret on two endpoints does not evict either (only a content change does).
    a = storage.client(None, Credentials("k", "s2", origin="a/s3"))
    b = storage.client("http://127.0.0.1:10", Credentials("k", "s2", origin="a/s3"))
    assert storage.client(None, Credentials("k", "s2", origin="a/s3")) is a
    assert storage.client("http://127.0.0.1:10", Credentials("k", "s2", origin="a/s3")) is b


def test_an_empty_secret_never_falls_back_to_the_operator_identity() -> None:
    storage = Storage(EP, "us-east-1")
    with pytest.raises(StorageError) as err:
        storage.client(None, Credentials("k", "", origin="a/s3"))
    assert "Secret a/s3" in str(err.value) and not err.value.transient


def test_credentials_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(Credentials("k", "hunter2", origin="a/s3"))


@pytest.mark.parametrize(
    ("code", "status"),
    [("NoSuchBucket", 404), ("AccessDenied", 403), ("InvalidAccessKeyId", 403), ("NoSuchKey", 404)],
)
def test_denied_and_absent_read_alike(code: str, status: int) -> None:
    storage = Storage(EP, "us-east-1")
    creds = Credentials("k", "s", origin="a/s3")
    stub = Stubber(storage.client(None, creds))
    stub.add_client_error("list_objects_v2", code, "detail that must not show", status)
    stub.activate()
    with pytest.raises(StorageError) as err:
        storage._list(None, creds, "s3://someone-elses-bucket/x/")
    assert str(err.value) == f"listing s3://someone-elses-bucket/x/: {UNIFORM}"
    assert not err.value.transient
