"""S3 access for the controller: source listings, manifest reads, progress, artifact deletion.

boto3 is synchronous, so every call runs in a worker thread (`asyncio.to_thread`). Clients are
cached by a sha256 of the endpoint and *all* the credential material (not just the access key id,
which a tenant may know of another tenant), so 2,000 objects do not mean 2,000 clients; when the
Secret a client came from changes, its old client is dropped.

Refusals and absences (AccessDenied, NoSuchBucket, 403/404) all read "not found or not permitted":
a status message must not tell a tenant whether someone else's bucket exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pitcrew.api.listing import ListedObject

NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
NO_BUCKET = frozenset({"NoSuchBucket"})
TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
# Answers that would tell a bucket that exists from one that does not: reported uniformly.
DENIED_OR_ABSENT = frozenset(
    {
        "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
        "InvalidBucketName", "NotFound", "NoSuchKey", "403", "404", "Forbidden", "AccountProblem",
    }
)  # fmt: skip
UNIFORM = "not found, or the credentials may not access it"
MAX_CLIENTS = 512


class StorageError(Exception):
    """S3 said no, or could not be reached; `transient` tells whether retrying may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        self.transient = transient
        super().__init__(message)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        return cls(bucket, key)


@dataclass(frozen=True)
class Credentials:
    """S3 credentials; both None: the operator's own identity (environment / instance role)."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    origin: str | None = None  # "namespace/secret-name" they were read from (cache invalidation)

    def __repr__(self) -> str:  # never log the secret
        return f"Credentials(access_key_id={self.access_key_id!r}, origin={self.origin!r})"


def fingerprint(endpoint: str | None, creds: Credentials) -> str:
    """The client cache key: a hash of everything that decides what the client may do."""
    material = "\0".join((endpoint or "", creds.access_key_id or "", creds.secret_access_key or ""))
    return hashlib.sha256(material.encode()).hexdigest()


def _error(e: Exception, what: str) -> StorageError:
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        transient = status >= 500 or code in TRANSIENT_CODES
        if not transient and (code in DENIED_OR_ABSENT or status in (403, 404)):
            return StorageError(f"{what}: {UNIFORM}", transient=False)
        return StorageError(f"{what}: {code or status} {e}", transient=transient)
    return StorageError(f"{what}: {e}", transient=True)


def delete_errors(uri: str, errors: list[dict[str, Any]], deleted: int) -> StorageError:
    """The per-key Errors of a DeleteObjects answer as one error (transient only if all are)."""
    shown = ", ".join(f"{e.get('Key')}: {e.get('Code')} {e.get('Message', '')}".rstrip() for e in errors[:3])
    more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
    transient = all(str(e.get("Code")) in TRANSIENT_CODES for e in errors)
    return StorageError(
        f"deleting {uri}: {len(errors)} of {deleted + len(errors)} objects not deleted: {shown}{more}",
        transient=transient,
    )


class Storage:
    def __init__(self, default_endpoint: str | None, region: str) -> None:
        self.default_endpoint = default_endpoint
        self.region = region
        self._clients: OrderedDict[str, Any] = OrderedDict()  # fingerprint -> client, LRU
        # Secret -> (fingerprint of its content, fingerprints of the clients made from it)
        self._origins: dict[str, tuple[str, set[str]]] = {}
        self._lock = threading.Lock()

    def client(self, endpoint: str | None, creds: Credentials) -> Any:
        endpoint = endpoint or self.default_endpoint
        key = fingerprint(endpoint, creds)
        with self._lock:
            if creds.origin is not None:
                if not (creds.access_key_id and creds.secret_access_key):
                    # Never fall back to the operator's own identity for a tenant's Secret.
                    raise StorageError(
                        f"Secret {creds.origin}: the access key id or the secret access key is empty",
                        transient=False,
                    )
                material = fingerprint(None, creds)
                known, made = self._origins.get(creds.origin, (material, set()))
                if known != material:
                    # The Secret changed: clients made from its old content go.
                    for old in made:
                        self._clients.pop(old, None)
                    made = set()
                made.add(key)
                self._origins[creds.origin] = (material, made)
            if key in self._clients:
                self._clients.move_to_end(key)
            else:
                while len(self._clients) >= MAX_CLIENTS:
                    self._clients.popitem(last=False)
                kwargs: dict[str, Any] = {}
                if creds.access_key_id and creds.secret_access_key:
                    kwargs = {
                        "aws_access_key_id": creds.access_key_id,
                        "aws_secret_access_key": creds.secret_access_key,
                    }
                self._clients[key] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=self.region,
                    config=Config(
                        retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=20,
                        s3={"addressing_style": "path"} if endpoint else {},
                    ),
                    **kwargs,
                )
            return self._clients[key]

    # -- sync bodies (run in threads) ---------------------------------------------------------

    def _list(self, endpoint: str | None, creds: Credentials, uri: str) -> list[ListedObject]:
        loc = S3Location.parse(uri)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        out: list[ListedObject] = []
        try:
            pages = self.client(endpoint, creds).get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=loc.bucket, Prefix=prefix):
                for o in page.get("Contents", ()):
                    out.append(ListedObject(o["Key"], int(o["Size"]), str(o.get("ETag", ""))))
        except (ClientError, BotoCoreError) as e:
            raise _error(e, f"listing {uri}") from e
        return out

    def _get(self, endpoint: str | None, creds: Credentials, uri: str) -> bytes | None:
        loc = S3Location.parse(uri)
        try:
            resp = self.client(endpoint, creds).get_object(Bucket=loc.bucket, Key=loc.key)
            body: bytes = resp["Body"].read()
            return body
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code", "")) in NOT_FOUND:
                return None
            raise _error(e, f"reading {uri}") from e
        except BotoCoreError as e:
            raise _error(e, f"reading {uri}") from e

    def _delete_prefix(self, endpoint: str | None, creds: Credentials, uri: str) -> int:
        loc = S3Location.parse(uri)
        prefix = loc.key.rstrip("/") + "/"
        client = self.client(endpoint, creds)
        deleted = 0
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
                if keys:
                    resp = client.delete_objects(Bucket=loc.bucket, Delete={"Objects": keys, "Quiet": True})
                    # A 200 answer can still refuse some keys: they are listed under Errors.
                    errors = resp.get("Errors") or []
                    if errors:
                        raise delete_errors(uri, errors, deleted + len(keys) - len(errors))
                    deleted += len(keys)
        except (ClientError, BotoCoreError) as e:
            raise _error(e, f"deleting {uri}") from e
        return deleted

    # -- async API ---------------------------------------------------------------------------

    async def list(self, endpoint: str | None, creds: Credentials, uri: str) -> list[ListedObject]:
        return await asyncio.to_thread(self._list, endpoint, creds, uri)

    async def get(self, endpoint: str | None, creds: Credentials, uri: str) -> bytes | None:
        return await asyncio.to_thread(self._get, endpoint, creds, uri)

    async def delete_prefix(self, endpoint: str | None, creds: Credentials, uri: str) -> int:
        return await asyncio.to_thread(self._delete_prefix, endpoint, creds, uri)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
