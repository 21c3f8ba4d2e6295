"""Storage.delete_prefix reads DeleteObjects' per-key Errors (a 200 answer can still refuse keys).

The S3 answers come from botocore's Stubber (a stand-in: MinIO refuses single keys of a batch delete
only under per-user policies the devcluster does not set up); the client and its request
validation are the real boto3 ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from pitcrew.storage import Credentials, Storage, StorageError

URI = "s3://engines/out/abc/"
KEYS = ["out/abc/config.json", "out/abc/rank0.engine", "out/abc/manifest.json"]


def stubbed(delete_answer: dict[str, Any]) -> tuple[Storage, Stubber]:
    storage = Storage("http://127.0.0.1:9", "us-east-1")
    client = storage.client(None, Credentials("key", "secret"))
    stub = Stubber(client)
    stub.add_response(
        "list_objects_v2",
        {"Contents": [{"Key": k, "Size": 1, "ETag": '"x"'} for k in KEYS], "IsTruncated": False},
        {"Bucket": "engines", "Prefix": "out/abc/"},
    )
    stub.add_response(
        "delete_objects",
        delete_answer,
        {"Bucket": "engines", "Delete": {"Objects": [{"Key": k} for k in KEYS], "Quiet": True}},
    )
    stub.activate()
    return storage, stub


def test_all_deleted_counts_the_keys() -> None:
    storage, stub = stubbed({})
    assert storage._delete_prefix(None, Credentials("key", "secret"), URI) == 3
    stub.assert_no_pending_responses()


def test_refused_keys_are_reported() -> None:
    answer = {
        "Errors": [
            {"Key": KEYS[1], "Code": "AccessDenied", "Message": "Access Denied."},
            {"Key": KEYS[2], "Code": "AccessDenied", "Message": "Access Denied."},
        ]
    }
    storage, stub = stubbed(answer)
    with pytest.raises(StorageError) as err:
        storage._delete_prefix(None, Credentials("key", "secret"), URI)
    message = str(err.value)
    assert message.startswith(f"deleting {URI}: 2 of 3 objects not deleted: ")
    assert f"{KEYS[1]}: AccessDenied Access Denied." in message and KEYS[2] in message
    assert err.value.transient is False  # a refusal does not go away by retrying
    stub.assert_no_pending_responses()


def test_only_transient_key_errors_are_transient() -> None:
    storage, _ = stubbed({"Errors": [{"Key": KEYS[0], "Code": "SlowDown", "Message": "slow down"}]})
    with pytest.raises(StorageError) as err:
        storage._delete_prefix(None, Credentials("key", "secret"), URI)
    assert err.value.transient is True and "1 of 3 objects not deleted" in str(err.value)
