"""The sandbox's S3 stand-in (sandbox/s3.py): a real moto server process serving a temp folder as
bucket `eodata`, read through GDAL's /vsis3/ and boto3 as the extractor and the rehearsal would.

rasterio.Env refuses AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY as plain options ("handled exclusively by
boto3"), so the keys go in through a rasterio session; the endpoint and path style are plain options.
GDAL caches /vsis3/ files by name, not by key or server: a file once read would still open with wrong
keys or a stopped server, so every read here runs with CPL_VSIL_CURL_NON_CACHED (dropped on close).
"""

from __future__ import annotations

import os
import socket
import stat
import urllib.error
import urllib.request

import boto3
import numpy as np
import pytest
import rasterio
import yaml
from botocore.exceptions import ClientError
from rasterio.errors import RasterioIOError
from rasterio.session import AWSSession
from rasterio.windows import Window

from extractor.errors import CbmError, UserError
from sandbox.s3 import EodataS3

KEY = "Sentinel-1/SAR/CARD-COH6/2026/04/05/S1_COH6_TEST/S1_COH6_TEST.tif"


def keys(s3: EodataS3) -> tuple[str, str]:
    doc = yaml.safe_load(s3.credentials_file.read_text())
    return doc["access_key"], doc["secret_key"]


def gdal_env(s3: EodataS3, access_key: str, secret_key: str) -> rasterio.Env:
    options = {"AWS_S3_ENDPOINT": f"127.0.0.1:{s3.port}", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
               "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_NON_CACHED": "/vsis3/"}
    return rasterio.Env(session=AWSSession(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                           region_name="us-east-1"), **options)


def client(s3: EodataS3, access_key: str, secret_key: str):
    return boto3.client("s3", endpoint_url=s3.endpoint(), region_name="us-east-1",
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small eodata tree: a tiled 2-band GeoTIFF, a text file at the top, one in a deep folder."""
    root = tmp_path_factory.mktemp("eodata")
    tif = root / KEY
    tif.parent.mkdir(parents=True)
    pixels = np.random.default_rng(7).integers(0, 10000, size=(2, 300, 260), dtype="uint16")
    with rasterio.open(tif, "w", driver="GTiff", width=260, height=300, count=2, dtype="uint16",
                       crs="EPSG:32632", transform=rasterio.Affine(20, 0, 500000, 0, -20, 6200000),
                       tiled=True, blockxsize=128, blockysize=128, compress="deflate") as dst:
        dst.write(pixels)
    (root / "catalog.json").write_text('{"features": []}\n')
    (tif.parent / "manifest.safe").write_text("<manifest/>\n")
    return root


@pytest.fixture(scope="module")
def s3(folder, tmp_path_factory):
    server = EodataS3(tmp_path_factory.mktemp("state"), folder, host="127.0.0.1").start(timeout=30)
    yield server
    server.purge()


def test_gdal_reads_the_same_pixels_through_vsis3(s3, folder):
    with rasterio.open(folder / KEY) as local:
        expected = local.read()
        window = local.read(2, window=Window(100, 150, 70, 40))
    with gdal_env(s3, *keys(s3)):
        with rasterio.open(f"/vsis3/{s3.bucket}/{KEY}") as remote:
            assert (remote.count, remote.height, remote.width) == (2, 300, 260)
            assert np.array_equal(remote.read(2, window=Window(100, 150, 70, 40)), window)
            assert np.array_equal(remote.read(), expected)


def test_every_file_is_an_object_keyed_by_its_relative_path(s3, folder):
    listed = client(s3, *keys(s3)).list_objects_v2(Bucket="eodata")["Contents"]
    expected = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert {o["Key"]: o["Size"] for o in listed} == expected


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_keys_are_refused(s3, wrong):
    access_key, secret_key = keys(s3)
    bad = (access_key, "not-the-secret") if wrong == "secret" else ("AKIANOTAKEYOFTHISSERVER", secret_key)
    with pytest.raises(ClientError) as err:
        client(s3, *bad).get_object(Bucket="eodata", Key=KEY)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    code = "SignatureDoesNotMatch" if wrong == "secret" else "InvalidAccessKeyId"
    assert err.value.response["Error"]["Code"] == code
    with gdal_env(s3, *bad), pytest.raises(RasterioIOError, match="signature|Access Key Id"):
        rasterio.open(f"/vsis3/eodata/{KEY}")


def test_unsigned_requests_and_the_moto_admin_api_are_refused(s3):
    """moto's /moto-api/ is unauthenticated (it could reset the auth counter): the stand-in shuts it."""
    for path in (f"/eodata/{KEY}", "/moto-api/data.json", "/moto-api/reset-auth"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(s3.endpoint() + path, data=b"0" if "reset" in path else None, timeout=5)
        assert err.value.code == 403, path


def test_credentials_file_is_private(s3):
    assert stat.S_IMODE(os.stat(s3.credentials_file).st_mode) == 0o600
    assert set(yaml.safe_load(s3.credentials_file.read_text())) == {"access_key", "secret_key"}


def test_start_is_idempotent(s3):
    pid = s3._state()["pid"]
    assert s3.start() is s3 and s3._state()["pid"] == pid


def test_stop_refuses_connections_and_a_restart_serves_the_same_objects(s3, folder):
    port = s3.port
    s3.stop()
    s3.stop()   # idempotent
    assert not s3.running
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with gdal_env(s3, *keys(s3)), pytest.raises(RasterioIOError, match="Could not connect|Failed to connect"):
        rasterio.open(f"/vsis3/eodata/{KEY}")
    s3.start(timeout=30)
    assert s3.running and s3.port == port
    assert stat.S_IMODE(os.stat(s3.credentials_file).st_mode) == 0o600
    body = client(s3, *keys(s3)).get_object(Bucket="eodata", Key=KEY)["Body"].read()
    assert body == (folder / KEY).read_bytes()
    with rasterio.open(folder / KEY) as local:
        corner = local.read(1, window=Window(0, 0, 16, 16))
    with gdal_env(s3, *keys(s3)), rasterio.open(f"/vsis3/eodata/{KEY}") as remote:
        assert np.array_equal(remote.read(1, window=Window(0, 0, 16, 16)), corner)


def test_user_errors(tmp_path, folder):
    with pytest.raises(UserError, match="not a directory"):
        EodataS3(tmp_path / "state", tmp_path / "missing").start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} .* in use"):
            EodataS3(tmp_path / "state", folder, port=port, host="127.0.0.1").start()


def test_port_before_the_first_start_is_an_error(tmp_path, folder):
    with pytest.raises(CbmError, match="never been started"):
        EodataS3(tmp_path, folder).port
