"""Which files of a product a run reads, and windowed reads of them.

Products are found from the catalogue's product_path (the CDSE productIdentifier, '/eodata/...')
in the storage the settings name (extractor/extract/storage.py: a mount, a folder or S3).
The product layouts on CDSE:
  s2  <SAFE>/GRANULE/<listed>/IMG_DATA/R10m|R20m/<...>_<band>_<res>m.jp2
  bs  <product>/<listed>.data/Gamma0_<VV|VH>.img (+ .hdr)
  c6  <product>/<listed>.tif, band 1 = VV, band 2 = VH
Folder names are listed, never derived from the product name.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from extractor.errors import one_line
from extractor.extract import storage
from extractor.extract.cards import NO_BAND_FILE, RIO_ERROR, RunSpec, SceneError


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


def product_location(settings, product_path: str | None) -> str:
    if not product_path:
        raise SceneError(NO_BAND_FILE, "the catalogue row has no product_path; re-run cbm catalog sync")
    return storage.product_location(settings, product_path)


def _missing(what: str, where: str) -> SceneError:
    return SceneError(NO_BAND_FILE, f"{what} not found in {where}")


def band_files(settings, spec: RunSpec, product_path: str | None) -> list[BandFile]:
    """The files of the run's bands in this product, or SceneError('No band file')."""
    root = product_location(settings, product_path)
    top = storage.list_dir(settings, root)
    if not top:
        raise _missing("product folder", root)
    if spec.card == "s2":
        return _s2_files(settings, spec, root, top)
    if spec.card == "bs":
        data = [n for n in top if n.endswith(".data")]
        if not data:
            raise _missing("<ref>.data folder", root)
        folder = posixpath.join(root, data[0])
        names = storage.list_dir(settings, folder)
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
    granules = [g for g in storage.list_dir(settings, granule_dir) if not g.startswith(".")]
    if not granules:
        raise _missing("a granule", granule_dir)
    res = spec.pixel_res
    img_dir = posixpath.join(granule_dir, granules[0], "IMG_DATA", f"R{res}m")
    names = storage.list_dir(settings, img_dir)
    out = []
    for band in spec.bands:
        suffix = f"_{band}_{res}m.jp2"
        hits = [n for n in names if n.endswith(suffix)]
        if not hits:
            raise _missing(f"band {band} (*{suffix})", img_dir)
        out.append(BandFile(band, band, posixpath.join(img_dir, hits[0]), 1))
    return out


def _with_proof(settings, path: str, fn):
    """fn() under the storage's Env. When GDAL fails: StorageFault if the storage does not answer;
    SceneError('No band file') if it answers and the file is gone; one more try if the file is
    there; SceneError('Rio error') if GDAL fails on it again (the file itself is bad)."""
    for attempt in (1, 2):
        try:
            with storage.env(settings):
                return fn()
        except rasterio.errors.RasterioError as exc:
            found = storage.read_failed(settings, path, exc)
            if isinstance(found, FileNotFoundError):
                raise _missing(posixpath.basename(path), posixpath.dirname(path)) from None
            if found is not None:
                raise found from None
            if attempt == 2:
                raise SceneError(RIO_ERROR, f"cannot read {path}: {one_line(exc)}") from None


def open_grid(settings, files: list[BandFile]) -> Grid:
    """The common grid of the run's band files (header reads only)."""
    grid = None
    for f in files:
        def header(f=f):
            with rasterio.open(f.path) as ds:
                return ds.count, Grid(ds.crs, ds.transform, ds.width, ds.height)

        count, g = _with_proof(settings, f.path, header)
        if f.index > count:
            raise SceneError(RIO_ERROR, f"{f.path} has {count} band(s), band {f.index} ({f.name}) expected")
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
    """Reads one window of each band file (only the byte ranges the window needs, over S3 too)."""

    def __init__(self, settings, files: list[BandFile], window: Window):
        self.settings = settings
        self.files = files
        self.window = window

    def read(self, f: BandFile) -> np.ndarray:
        def window():
            with rasterio.open(f.path) as ds:
                return ds.read(f.index, window=self.window)

        return _with_proof(self.settings, f.path, window)
