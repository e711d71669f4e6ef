"""moto's KMS in server mode: a real local HTTP server speaking the AWS KMS API.

``start_moto()`` runs ``python -m moto.server`` on a free loopback port and waits for it with a
deadline; the caller stops it (``MotoKms.stop``, by its PID). Keys are created in it through the
AWS API, as an operator would (``create_key``), and their public halves read with
``GetPublicKey``. ``service_env`` is what a service process needs to reach it through the
standard AWS variables, with fixed dummy credentials and no host configuration read.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
from cryptography.hazmat.primitives import serialization

from octosts.dev.envoy import free_port
from tests.polling import eventually_blocking

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

REGION = "eu-west-1"
# Dummy credentials moto accepts; what a real deployment gets from its role instead.
ACCESS_KEY_ID = "AKIAOCTOSTSTEST00001"
SECRET_ACCESS_KEY = "octo-sts-test-secret-never-shown"


@dataclass
class MotoKms:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> KMSClient:
        return boto3.session.Session().client(
            "kms",
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def create_key(self, spec: str = "RSA_2048", usage: str = "SIGN_VERIFY") -> str:
        """A new key's ARN (``spec``/``usage`` as in KMS ``CreateKey``)."""
        meta = self.client().create_key(KeySpec=spec, KeyUsage=usage)  # type: ignore[arg-type]
        return meta["KeyMetadata"]["Arn"]

    def public_key_pem(self, arn: str) -> bytes:
        der = self.client().get_public_key(KeyId=arn)["PublicKey"]
        return serialization.load_der_public_key(der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def service_env(self, workdir: Path) -> dict[str, str]:
        """Environment for a process using the aws-kms signer against this server."""
        none = str(workdir / "no-aws-config")
        return {
            "AWS_ENDPOINT_URL_KMS": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_CONFIG_FILE": none,
            "AWS_SHARED_CREDENTIALS_FILE": none,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_moto(workdir: Path, attempts: int = 2) -> MotoKms:
    """A running moto server; a start lost to a port race is retried on a fresh port."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        port = free_port()
        log = workdir / f"moto-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        moto = MotoKms(f"http://127.0.0.1:{port}", proc, log)
        try:
            eventually_blocking(lambda m=moto: _ready(m), "moto server", timeout=30.0)
        except BaseException:
            exited = proc.poll() is not None  # e.g. the port was taken in between
            moto.stop()
            if attempt == attempts or not exited:
                raise
            continue
        return moto
    raise AssertionError("unreachable")


def _ready(moto: MotoKms) -> bool:
    if moto.proc.poll() is not None:
        raise _Exited(moto.log.read_text(errors="replace")[-2000:])
    try:
        return httpx.get(f"{moto.url}/moto-api/", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


class _Exited(AssertionError):
    """moto exited before answering (its log's tail)."""
