"""Generated products with the real CDSE layouts and formats (tests, benchmark, local rehearsal).

  S2 L2A  <root>/Sentinel-2/MSI/L2A/YYYY/MM/DD/<title>.SAFE/GRANULE/L2A_T<tile>_A<orbit>_<time>/
          IMG_DATA/R10m/T<tile>_<time>_<band>_10m.jp2, R20m/..._<band>_20m.jp2 (uint16 JPEG2000,
          lossless, SCL uint8), MTD_MSIL2A.xml and manifest.safe
  CARD-BS <root>/Sentinel-1/SAR/CARD-BS/YYYY/MM/DD/<ref>/<ref>.data/Gamma0_VV.img + .hdr (ENVI float32)
          and <ref>.dim
  COH6    <root>/Sentinel-1/SAR/CARD-COH6/YYYY/MM/DD/<ref>/<ref>.tif (2-band float32 GeoTIFF, VV, VH)
Every function returns the product's catalogue path ('/eodata/...'), as productIdentifier has it.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio import Affine

JP2_OPTIONS = {"driver": "JP2OpenJPEG", "QUALITY": "100", "REVERSIBLE": "YES",
               "BLOCKXSIZE": "1024", "BLOCKYSIZE": "1024", "CODEC": "JP2"}  # lossless, 1024 tiles as S2


def _write(path: Path, arrays: list[np.ndarray], crs, transform: Affine, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = arrays[0].shape
    profile = {"width": w, "height": h, "count": len(arrays), "dtype": arrays[0].dtype, "crs": crs,
               "transform": transform, **options}
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        with rasterio.open(path, "w", **profile) as dst:
            for i, a in enumerate(arrays, start=1):
                dst.write(a, i)


def s2_title(sensing: dt.datetime, tile: str, baseline: str = "N0510", sat: str = "S2B") -> str:
    t = sensing.strftime("%Y%m%dT%H%M%S")
    return f"{sat}_MSIL2A_{t}_{baseline}_R051_T{tile}_{(sensing + dt.timedelta(hours=2)).strftime('%Y%m%dT%H%M%S')}.SAFE"


def write_s2(root: str | os.PathLike, sensing: dt.datetime, tile: str, epsg: int, x0: float, y0: float,
             bands10: dict[str, np.ndarray], bands20: dict[str, np.ndarray], *, baseline: str = "N0510",
             sat: str = "S2B", geotiff: bool = False) -> str:
    """An S2 L2A product; bands10 at 10 m and bands20 (incl. SCL) at 20 m, top-left corner (x0, y0)."""
    title = s2_title(sensing, tile, baseline, sat)
    rel = f"Sentinel-2/MSI/L2A/{sensing:%Y/%m/%d}/{title}"
    safe = Path(root) / rel
    t = sensing.strftime("%Y%m%dT%H%M%S")
    granule = safe / "GRANULE" / f"L2A_T{tile}_A0{sensing.toordinal() % 100000:05d}_{t}" / "IMG_DATA"
    ext = "tif" if geotiff else "jp2"
    opts = {"driver": "GTiff", "compress": "deflate", "tiled": True, "blockxsize": 512, "blockysize": 512,
            "predictor": 2} if geotiff else JP2_OPTIONS
    for res, bands in ((10, bands10), (20, bands20)):
        for name, arr in bands.items():
            if not geotiff and min(arr.shape) >= 4096:
                opts = {**JP2_OPTIONS, "RESOLUTIONS": "6"}  # the real products' 6 levels
            path = granule / f"R{res}m" / f"T{tile}_{t}_{name}_{res}m.{ext}"
            _write(path, [arr], f"EPSG:{epsg}", Affine(res, 0, x0, 0, -res, y0), **opts)
    (safe / "MTD_MSIL2A.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/'
        'PSD/User_Product_Level-2A.xsd"><n1:General_Info><Product_Info><PRODUCT_URI>' + title +
        '</PRODUCT_URI><PROCESSING_BASELINE>' + baseline[1:3] + "." + baseline[3:] +
        '</PROCESSING_BASELINE></Product_Info></n1:General_Info></n1:Level-2A_User_Product>\n')
    (safe / "manifest.safe").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU '
                                        'xmlns:xfdu="urn:ccsds:schema:xfdu:1"/>\n')
    return "/eodata/" + rel


def s1_reference(start: dt.datetime, suffix: str, sat: str = "S1A") -> str:
    a = start.strftime("%Y%m%dT%H%M%S")
    b = (start + dt.timedelta(seconds=25)).strftime("%Y%m%dT%H%M%S")
    return f"{sat}_IW_GRDH_1SDV_{a}_{b}_052433_06574A_9703_{suffix}"


def write_bs(root, start: dt.datetime, crs, transform: Affine, vv: np.ndarray, vh: np.ndarray, sat: str = "S1A",
             ref: str | None = None) -> str:
    """A CARD-BS product: BEAM-DIMAP <ref>.dim + <ref>.data/Gamma0_VV|VH.img/.hdr (ENVI float32).
    ref: the product's name (default: made up from `start`)."""
    ref = ref or s1_reference(start, "CARD_BS", sat)
    rel = f"Sentinel-1/SAR/CARD-BS/{start:%Y/%m/%d}/{ref}"
    folder = Path(root) / rel
    for name, arr in (("VV", vv), ("VH", vh)):
        _write(folder / f"{ref}.data" / f"Gamma0_{name}.img", [arr.astype(np.float32)], crs, transform, driver="ENVI")
    (folder / f"{ref}.dim").write_text('<?xml version="1.0" encoding="ISO-8859-1"?>\n<Dimap_Document name="'
                                       + ref + '.dim"/>\n')
    return "/eodata/" + rel


def write_c6(root, start: dt.datetime, crs, transform: Affine, vv: np.ndarray, vh: np.ndarray, sat: str = "S1A",
             ref: str | None = None, product: str = "CARD-COH6") -> str:
    """A CARD-COH6 product: <ref>/<ref>.tif, one GeoTIFF with band 1 = VV, band 2 = VH coherence.
    ref: the product's name (default: made up from `start`); product: CARD-COH6 or CARD-COH12."""
    ref = ref or s1_reference(start, product.replace("-", "_"), sat)
    rel = f"Sentinel-1/SAR/{product}/{start:%Y/%m/%d}/{ref}"
    _write(Path(root) / rel / f"{ref}.tif", [vv.astype(np.float32), vh.astype(np.float32)], crs, transform,
           driver="GTiff", compress="deflate")
    return "/eodata/" + rel
