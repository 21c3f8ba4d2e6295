"""MinIO on loopback as the S3 server, and the bucket the operator writes engines to."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from .binaries import Binaries, locate
from .errors import DevclusterError
from .ports import LOOPBACK, pick_free_ports

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Info:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = REGION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> S3Info:
        return cls(**d)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "PITCREW_S3_ENDPOINT": self.endpoint,
            "PITCREW_S3_BUCKET": self.bucket,
        }

    def client(self) -> Any:
        import boto3  # imported lazily: only S3 users pay for it
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )


def credentials(bucket: str, port: int) -> S3Info:
    return S3Info(
        endpoint=f"http://{LOOPBACK}:{port}",
        access_key="pitcrew-" + secrets.token_hex(4),
        secret_key=secrets.token_hex(20),
        bucket=bucket,
    )


def argv(bins: Binaries, data_dir: Path, port: int, console_port: int, host: str = LOOPBACK) -> list[str]:
    """MinIO's command line; `host` 0.0.0.0 lets pods of the real node reach it via their gateway."""
    return [
        str(bins.path("minio")),
        "server",
        str(data_dir),
        "--address",
        f"{host}:{port}",
        "--console-address",
        f"{LOOPBACK}:{console_port}",
        "--quiet",
    ]


def env(info: S3Info) -> dict[str, str]:
    return {
        "MINIO_ROOT_USER": info.access_key,
        "MINIO_ROOT_PASSWORD": info.secret_key,
        "MINIO_UPDATE": "off",
        "MINIO_BROWSER_REDIRECT": "off",
    }


def live(info: S3Info) -> bool:
    try:
        return requests.get(f"{info.endpoint}/minio/health/live", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def ensure_bucket(info: S3Info, timeout: float = 20) -> None:
    """Creates the bucket (idempotent); MinIO can answer /live a moment before it accepts writes."""
    client = info.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=info.bucket)
            return
        except client.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@contextlib.contextmanager
def standalone(
    directory: Path, bucket: str, timeout: float = 30, build_tools: Path | None = None
) -> Iterator[tuple[S3Info, int]]:
    """A MinIO of its own in `directory` (data and minio.log), without the rest of the devcluster.

    For tests and benchmarks that need only S3. Yields the connection info and the server's pid.
    """
    bins = locate(["minio"], build=False, script=build_tools)
    port, console = pick_free_ports(2)
    info = credentials(bucket, port)
    (directory / "data").mkdir(parents=True, exist_ok=True)
    log_path = directory / "minio.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv(bins, directory / "data", port, console),
            env={**os.environ, **env(info)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while not live(info):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise DevclusterError("MinIO did not start", component="minio", log=log_path)
                time.sleep(0.2)
            ensure_bucket(info)
            yield info, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
