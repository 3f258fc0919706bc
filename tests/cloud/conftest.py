"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for the object-storage tests.

The server runs in its own process, started and stopped here. It checks credentials:
the first requests (unauthenticated) create a user with full rights and its access key,
so a wrong key is rejected like on AWS.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CLOUD_EXTRAS = "pip install -r requirements-cloud.txt"
BUCKET = "ade-runs"


def needs(*modules: str):
    """Skip the calling test module, with the install command, when an optional extra is missing."""
    for m in modules:
        pytest.importorskip(m, reason=f"{m} is an optional extra; {CLOUD_EXTRAS} to run these tests")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key: str
    secret: str

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, **kw):
        import boto3

        creds = {"aws_access_key_id": self.key, "aws_secret_access_key": self.secret, **kw}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **creds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 120  # a generous bound for a busy machine; normally ~2 s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("moto server did not start listening")


@pytest.fixture(scope="session")
def s3_server():
    needs("moto", "s3fs", "boto3")
    import boto3

    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")  # create_user, put_user_policy, create_access_key
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="ade")
        iam.put_user_policy(UserName="ade", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        k = iam.create_access_key(UserName="ade")["AccessKey"]
        server = S3Server(endpoint, k["AccessKeyId"], k["SecretAccessKey"])
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Credentials and endpoint in the environment (as a user would set them) and a fresh mirror cache."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ADE_REMOTE_CACHE", str(tmp_path / "mirrors"))
    monkeypatch.delenv("ADE_STORAGE_OPTIONS", raising=False)
    from core.run import remote

    monkeypatch.setattr(remote, "_MIRRORS", {})
    return s3_server


def upload_run(server: S3Server, run_dir: Path, prefix: str, skip: tuple[str, ...] = ()) -> None:
    """Upload a local run folder to s3://BUCKET/prefix (manifest last), leaving out ``skip`` names."""
    s3 = server.client()
    files = sorted(p for p in run_dir.rglob("*") if p.is_file() and "cache" not in p.relative_to(run_dir).parts)
    files.sort(key=lambda p: p.name == "manifest.json")
    for p in files:
        rel = p.relative_to(run_dir).as_posix()
        if rel not in skip:
            s3.upload_file(str(p), BUCKET, f"{prefix}/{rel}")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    return dst
