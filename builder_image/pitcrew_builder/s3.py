"""S3 access: client construction (credentials, endpoint, retries) and transfer settings.

Credentials come from the env vars the controller fills from Secrets (plan.CREDENTIAL_ENV); without
them boto3's default chain applies (instance profile, IRSA, AWS_* env). The endpoint comes from the
plan, else AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Literal

import boto3
import botocore.session
from awscrt.exceptions import AwsCrtError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pitcrew.api.plan import CREDENTIAL_ENV

Role = Literal["source", "output"]
MiB = 1024 * 1024

# Errors that mean "this object or bucket is not there / not ours" rather than a transient fault.
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
DENIED_CODES = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


@dataclass(frozen=True)
class TransferSettings:
    """Parallelism and part sizes; env overrides let operators tune without a new image."""

    # Requests in flight at once (whole files or resumable parts; the CRT splits each further).
    concurrency: int = 8
    # Resumable unit of large downloads (a part is recorded as done when all of it is on disk).
    part_size: int = 64 * MiB
    # Objects at least this large are fetched with our resumable ranged downloader; None: none are.
    # Off by default: the operator's builder pods run restartPolicy Never on an emptyDir, so a retry
    # starts on an empty disk and part-level resume never helps there, while the ranged path costs
    # speed (awscrt cannot write a ranged GET at a file offset, so Python writes every chunk: 0.57x
    # s5cmd vs 0.95x for whole-file GETs written by the CRT, docs/benchmarks.md). Set it for CLI runs
    # on a work dir that outlives the process (a PVC). Whole files still resume file by file.
    resumable_threshold: int | None = None

    @classmethod
    def from_env(cls) -> TransferSettings:
        return cls(
            concurrency=int(os.environ.get("PITCREW_S3_CONCURRENCY", cls.concurrency)),
            part_size=int(os.environ.get("PITCREW_S3_PART_SIZE", cls.part_size)),
            resumable_threshold=_optional_size(os.environ.get("PITCREW_S3_RESUMABLE_THRESHOLD")),
        )


def _optional_size(value: str | None) -> int | None:
    """A byte count from the environment; unset, empty or "off" means none."""
    if value is None or value.strip().lower() in ("", "off"):
        return None
    return int(value)


def credentials_for(role: Role, environ: dict[str, str] | None = None) -> dict[str, str]:
    """boto3 client kwargs for the role's credentials, or {} to use the default chain."""
    env = os.environ if environ is None else environ
    key_var, secret_var = CREDENTIAL_ENV[role]
    key, secret = env.get(key_var), env.get(secret_var)
    if key and secret:
        return {"aws_access_key_id": key, "aws_secret_access_key": secret}
    return {}


def resolve_endpoint(plan_endpoint: str | None, environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return plan_endpoint or env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


_loader: Any = None
_loader_lock = threading.Lock()


def _botocore_session() -> botocore.session.Session:
    """A new botocore session (its own credentials and handlers) sharing one data loader per process:
    the S3 service model is parsed once (~0.1-0.2 CPU s per client otherwise; a build makes several)."""
    global _loader
    session = botocore.session.Session()
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
    return session


def make_client(role: Role, endpoint: str | None, settings: TransferSettings) -> Any:
    endpoint = resolve_endpoint(endpoint)
    config = Config(
        retries={"max_attempts": int(os.environ.get("PITCREW_S3_MAX_ATTEMPTS", "10")), "mode": "adaptive"},
        connect_timeout=10,
        read_timeout=120,
        # One connection per concurrent part plus headroom for HEAD/PUT of small objects.
        max_pool_connections=max(10, settings.concurrency * 2 + 4),
        # Path style works with MinIO and other S3-compatible servers on bare hosts or IPs.
        s3={"addressing_style": "path"} if endpoint else {},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    creds = credentials_for(role)
    session = boto3.session.Session(
        botocore_session=_botocore_session(),
        aws_access_key_id=creds.get("aws_access_key_id"),
        aws_secret_access_key=creds.get("aws_secret_access_key"),
    )
    return session.client("s3", endpoint_url=endpoint, region_name=region(), config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def describe(exc: BaseException) -> str:
    """A short, credential-free description of an S3 failure."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AwsCrtError):
        from pitcrew_builder.crt import describe_crt  # crt imports this module

        return describe_crt(exc)
    return str(exc)
