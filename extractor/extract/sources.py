"""Where a scene's band files are, and windowed reads of them.

Products are found from the catalogue's product_path (the CDSE productIdentifier, '/eodata/...'):
  * on a mounted tree: <settings.eodata.root>/<path without the leading /eodata/>
  * over S3 when settings.s3.endpoint is set: /vsis3/<bucket>/<same key>, read through GDAL with
    the endpoint, keys and path style passed as GDAL config in rasterio.Env (never logged).
The product layouts on CDSE:
  s2  <SAFE>/GRANULE/<listed>/IMG_DATA/R10m|R20m/<...>_<band>_<res>m.jp2
  bs  <product>/<listed>.data/Gamma0_<VV|VH>.img (+ .hdr)
  c6  <product>/<listed>.tif, band 1 = VV, band 2 = VH
Folder names are listed, never derived from the product name.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from extractor.errors import one_line
from extractor.extract.cards import NO_BAND_FILE, RIO_ERROR, RunSpec, SceneError

EODATA_PREFIX = "/eodata/"


@dataclass(frozen=True)
class BandFile:
    name: str     # band name (B04, SCL, VV)
    code: str     # code in sigs.band
    path: str     # local path or /vsis3/... path
    index: int    # 1-based band index in the file


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a scene's bands (all bands of a run must share it)."""
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int


def is_s3(settings) -> bool:
    return bool(settings.s3.endpoint)


def gdal_options(settings) -> dict:
    """GDAL config for reading: threads for decoding; S3 endpoint and keys when reading over S3.
    The returned dict holds secrets: pass it to rasterio.Env only, never print it."""
    opts = {"GDAL_NUM_THREADS": str(settings.extract.threads), "GDAL_CACHEMAX": 256}
    if is_s3(settings):
        s3 = settings.s3
        opts.update({
            "AWS_S3_ENDPOINT": s3.endpoint.split("://", 1)[-1].rstrip("/"),  # host only
            "AWS_VIRTUAL_HOSTING": "FALSE" if s3.path_style else "TRUE",
            "AWS_HTTPS": "YES" if s3.https else "NO",
            "AWS_DEFAULT_REGION": "default",
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".jp2,.tif,.tiff,.xml,.img,.hdr,.safe",
            "GDAL_HTTP_MAX_RETRY": "5", "GDAL_HTTP_RETRY_DELAY": "2",
            # no folder listing on open, but sibling files (ENVI .hdr) are still probed one by one
            "GDAL_DISABLE_READDIR_ON_OPEN": "TRUE",
        })
        if s3.access_key and s3.secret_key:
            opts["AWS_ACCESS_KEY_ID"] = s3.access_key
            opts["AWS_SECRET_ACCESS_KEY"] = s3.secret_key
        else:
            opts["AWS_NO_SIGN_REQUEST"] = "YES"
    return opts


def product_location(settings, product_path: str | None) -> str:
    if not product_path:
        raise SceneError(NO_BAND_FILE, "the catalogue row has no product_path; re-run cbm catalog sync")
    key = product_path[len(EODATA_PREFIX):] if product_path.startswith(EODATA_PREFIX) else product_path.lstrip("/")
    key = key.rstrip("/")
    if is_s3(settings):
        return f"/vsis3/{settings.s3.bucket}/{key}"
    return os.path.join(settings.eodata.root, key)


def list_dir(settings, path: str) -> list[str]:
    """Names directly inside a folder (local or S3); [] when it does not exist."""
    if path.startswith("/vsis3/"):
        import pyogrio.core as vsi  # lazy: only S3 listing needs pyogrio (which loads pyarrow when installed)

        _s3_config_for_pyogrio(settings)
        try:
            entries = vsi.vsi_listtree(path.rstrip("/") + "/")
        except Exception:  # noqa: BLE001 - not found / not listable: handled by the caller
            return []
        names = set()
        for e in entries:
            rel = e[len(path.rstrip("/")) + 1:] if e.startswith(path) else e
            if rel:
                names.add(rel.split("/", 1)[0])
        return sorted(names)
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _s3_config_for_pyogrio(settings) -> None:
    import pyogrio  # lazy: as in list_dir

    opts = {k: v for k, v in gdal_options(settings).items() if k.startswith(("AWS_", "CPL_", "GDAL_HTTP"))}
    pyogrio.set_gdal_config_options(opts)


def _missing(what: str, where: str) -> SceneError:
    return SceneError(NO_BAND_FILE, f"{what} not found in {where}")


def band_files(settings, spec: RunSpec, product_path: str | None) -> list[BandFile]:
    """The files of the run's bands in this product, or SceneError('No band file')."""
    root = product_location(settings, product_path)
    top = list_dir(settings, root)
    if not top:
        raise _missing("product folder", root)
    if spec.card == "s2":
        return _s2_files(settings, spec, root, top)
    if spec.card == "bs":
        data = [n for n in top if n.endswith(".data")]
        if not data:
            raise _missing("<ref>.data folder", root)
        folder = posixpath.join(root, data[0])
        names = list_dir(settings, folder)
        out = []
        for band, code in zip(spec.bands, spec.codes):
            img = f"Gamma0_{band}.img"
            if img not in names or f"Gamma0_{band}.hdr" not in names:
                raise _missing(f"{img} (+ .hdr)", folder)
            out.append(BandFile(band, code, posixpath.join(folder, img), 1))
        return out
    # c6: one 2-band GeoTIFF, VV then VH
    tifs = [n for n in top if n.lower().endswith((".tif", ".tiff"))]
    if not tifs:
        raise _missing("the COH GeoTIFF (.tif)", root)
    path = posixpath.join(root, tifs[0])
    return [BandFile(b, c, path, 1 if b == "VV" else 2) for b, c in zip(spec.bands, spec.codes)]


def _s2_files(settings, spec: RunSpec, root: str, top: list[str]) -> list[BandFile]:
    if "GRANULE" not in top:
        raise _missing("GRANULE folder", root)
    granule_dir = posixpath.join(root, "GRANULE")
    granules = [g for g in list_dir(settings, granule_dir) if not g.startswith(".")]
    if not granules:
        raise _missing("a granule", granule_dir)
    res = spec.pixel_res
    img_dir = posixpath.join(granule_dir, granules[0], "IMG_DATA", f"R{res}m")
    names = list_dir(settings, img_dir)
    out = []
    for band in spec.bands:
        suffix = f"_{band}_{res}m.jp2"
        hits = [n for n in names if n.endswith(suffix)]
        if not hits:
            raise _missing(f"band {band} (*{suffix})", img_dir)
        out.append(BandFile(band, band, posixpath.join(img_dir, hits[0]), 1))
    return out


def open_grid(settings, files: list[BandFile]) -> Grid:
    """The common grid of the run's band files (header reads only)."""
    grid = None
    with rasterio.Env(**gdal_options(settings)):
        for f in files:
            try:
                with rasterio.open(f.path) as ds:
                    if f.index > ds.count:
                        raise SceneError(RIO_ERROR, f"{f.path} has {ds.count} band(s), band {f.index} ({f.name}) expected")
                    g = Grid(ds.crs, ds.transform, ds.width, ds.height)
            except rasterio.errors.RasterioError as exc:
                raise SceneError(RIO_ERROR, f"cannot open {f.path}: {exc}") from None
            if g.crs is None:
                raise SceneError(RIO_ERROR, f"{f.path} has no CRS")
            t = g.transform
            if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
                raise SceneError(RIO_ERROR, f"{f.path} is not a north-up grid ({tuple(t)[:6]})")
            if grid is None:
                grid = g
            elif g != grid:
                raise SceneError(RIO_ERROR, f"{f.path} is not on the same grid as the other bands of the run")
    return grid


class BandReader:
    """Reads one window of each band file, keeping GDAL's threads busy (GDAL_NUM_THREADS)."""

    def __init__(self, settings, files: list[BandFile], window: Window):
        self.settings = settings
        self.files = files
        self.window = window

    def read(self, f: BandFile) -> np.ndarray:
        try:
            with rasterio.Env(**gdal_options(self.settings)):
                with rasterio.open(f.path) as ds:
                    return ds.read(f.index, window=self.window)
        except rasterio.errors.RasterioError as exc:
            raise SceneError(RIO_ERROR, f"cannot read {f.path}: {one_line(exc)}") from None
