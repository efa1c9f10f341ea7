"""Reading parcel files: Shapefile, GeoPackage, GeoJSON (pyogrio, GDAL) and GeoParquet (pyarrow).

`open_parcel_file(path)` checks the file up front (exists, readable, one polygon layer, has
features, has a CRS with an EPSG code) and returns a `ParcelSource` whose `batches()` stream
Arrow record batches: the attributes as they are, plus the geometry as WKB in `GEOMETRY`.
Every problem a user can fix is a one-line `UserError` naming the file and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
from pyogrio.errors import DataLayerError, DataSourceError, FeatureError, FieldError, GeometryError
from pyogrio.raw import open_arrow
from rasterio.crs import CRS

from extractor.errors import UserError, one_line

GEOMETRY = "__cbm_wkb__"   # name of the WKB column in the batches we yield
BATCH_SIZE = 16384   # features per COPY; bounds the memory for big files
POLYGONAL_TYPES = {"Polygon", "MultiPolygon", "CurvePolygon", "MultiSurface", "Polygon Z", "MultiPolygon Z",
                   "Polygon M", "MultiPolygon M", "Polygon ZM", "MultiPolygon ZM"}
# Layer types that may hold polygons among other things: decided per feature in the database.
MIXED_TYPES = {"Unknown", "GeometryCollection", "Geometry", "GeometryCollection Z", "Unknown Z"}
FORMATS = "a Shapefile, GeoPackage, GeoJSON or GeoParquet file"


@dataclass
class ParcelSource:
    path: Path
    driver: str                 # 'ESRI Shapefile', 'GPKG', 'GeoJSON', 'GeoParquet', ...
    layer: str | None
    srid: int
    features: int | None        # None when the format cannot tell cheaply
    fid_column: str | None      # a source column with stable feature ids (GeoPackage fid), if any
    geometry_type: str | None
    several_layers: bool = False   # name the layer in messages only when there is a choice
    _drop: list[str] = field(default_factory=list)   # columns that are not attributes

    @property
    def describe(self) -> str:
        layer = f" (layer {self.layer})" if self.several_layers else ""
        return f"{self.path.name}{layer}"

    def batches(self) -> Iterator:
        """Arrow record batches: attribute columns plus the WKB geometry in column GEOMETRY."""
        if self.driver == "GeoParquet":
            yield from _parquet_batches(self)
        else:
            yield from _ogr_batches(self)


def open_parcel_file(path: str | Path, layer: str | None = None, srid: int | None = None) -> ParcelSource:
    """Inspect a parcel file and return how to read it; every user mistake is a UserError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"parcel file {p} does not exist; check the path")
    head = b""
    if p.is_file():  # a folder may still be a dataset GDAL reads (e.g. a FileGDB)
        try:
            with open(p, "rb") as fh:
                head = fh.read(4)
        except OSError as exc:
            raise UserError(f"parcel file {p} cannot be read ({exc.strerror}); check its permissions") from None
        if not head:
            raise UserError(f"parcel file {p} is empty (0 bytes); give {FORMATS}")
    if head == b"PAR1":
        return _open_parquet(p, layer, srid)
    return _open_ogr(p, layer, srid)


# -- GDAL formats (pyogrio) -------------------------------------------------------------------
def _open_ogr(p: Path, layer: str | None, srid: int | None) -> ParcelSource:
    try:
        layers = pyogrio.list_layers(p)
    except DataSourceError as exc:
        raise UserError(f"parcel file {p} is not a readable vector file ({one_line(exc, 200)}); give {FORMATS}") from None
    spatial = [str(name) for name, gtype in layers if gtype is not None]
    if layer is None:
        if not spatial:
            raise UserError(f"parcel file {p} has no layer with geometries; give a file of parcel polygons")
        if len(spatial) > 1:
            raise UserError(f"parcel file {p} has {len(spatial)} layers ({', '.join(spatial[:10])}); "
                            "choose one with --layer")
        layer = spatial[0]
    try:
        info = pyogrio.read_info(p, layer=layer, force_feature_count=True)
    except (DataLayerError, DataSourceError) as exc:
        names = ", ".join(str(name) for name, _ in layers)
        raise UserError(f"parcel file {p} has no layer {layer!r} (layers: {names}); fix --layer") from None
    where = f"parcel file {p}" + (f" layer {layer}" if len(layers) > 1 else "")
    gtype = info.get("geometry_type")
    if gtype is None:
        raise UserError(f"{where} has no geometry column; give a file of parcel polygons")
    if gtype not in POLYGONAL_TYPES and gtype not in MIXED_TYPES:
        raise UserError(f"{where} holds {gtype} features, not polygons; give a file of parcel polygons")
    features = info.get("features")
    if features == 0:
        raise UserError(f"{where} has no features (0 parcels); give a file with parcels")
    fid = info.get("fid_column") or None
    return ParcelSource(path=p, driver=info.get("driver") or "GDAL", layer=layer,
                        srid=_resolve_srid(info.get("crs"), srid, where),
                        features=features if features and features > 0 else None,
                        fid_column=fid, geometry_type=gtype, several_layers=len(layers) > 1)


def _ogr_batches(src: ParcelSource) -> Iterator:
    try:
        with open_arrow(src.path, layer=src.layer, return_fids=src.fid_column is not None,
                        batch_size=BATCH_SIZE, use_pyarrow=True) as (meta, reader):
            geom = meta.get("geometry_name") or "wkb_geometry"
            for batch in reader:
                names = [GEOMETRY if n == geom else n for n in batch.schema.names]
                yield pa.RecordBatch.from_arrays(batch.columns, names=names)
    except (DataSourceError, FeatureError, FieldError, GeometryError) as exc:
        raise UserError(f"parcel file {src.path} cannot be read ({one_line(exc, 200)}); check or re-export it") from None


# -- GeoParquet (pyarrow) ---------------------------------------------------------------------
def _open_parquet(p: Path, layer: str | None, srid: int | None) -> ParcelSource:
    if layer is not None:
        raise UserError(f"parcel file {p} is GeoParquet, which has no layers; drop --layer")
    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for broken files
        raise UserError(f"parcel file {p} is not a readable Parquet file ({one_line(exc, 200)}); give {FORMATS}") from None
    raw = (pf.schema_arrow.metadata or {}).get(b"geo")
    if raw is None:
        raise UserError(f"parcel file {p} is Parquet without GeoParquet 'geo' metadata; "
                        "write it as GeoParquet (e.g. geopandas to_parquet or ogr2ogr -f Parquet)")
    try:
        geo = json.loads(raw)
        column = geo["primary_column"]
        spec = geo["columns"][column]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"parcel file {p} has malformed GeoParquet 'geo' metadata; re-export it") from None
    if str(spec.get("encoding", "")).upper() != "WKB":
        raise UserError(f"parcel file {p}: geometry column {column!r} is encoded as {spec.get('encoding')!r}; "
                        "only WKB GeoParquet is supported, re-export it with WKB encoding")
    if column not in pf.schema_arrow.names:
        raise UserError(f"parcel file {p}: GeoParquet geometry column {column!r} is missing; re-export it")
    where = f"parcel file {p}"
    types = spec.get("geometry_types") or []
    plain = {t.replace(" Z", "") for t in types}
    if plain and not plain & {"Polygon", "MultiPolygon", "GeometryCollection"}:
        raise UserError(f"{where} holds {', '.join(sorted(plain))} features, not polygons; "
                        "give a file of parcel polygons")
    features = pf.metadata.num_rows
    if features == 0:
        raise UserError(f"{where} has no features (0 parcels); give a file with parcels")
    # Per the GeoParquet spec an absent "crs" means OGC:CRS84 (lon/lat), an explicit null "unknown".
    crs = spec["crs"] if "crs" in spec else {"id": {"authority": "OGC", "code": "CRS84"}}
    drop = [name for name, col in geo["columns"].items() if name != column]
    covering = (spec.get("covering") or {}).get("bbox") or {}
    drop += sorted({path[0] for path in covering.values() if isinstance(path, list) and path})
    drop += [n for n in pf.schema_arrow.names if n.startswith("__index_level_")]
    return ParcelSource(path=p, driver="GeoParquet", layer=column, srid=_resolve_srid(crs, srid, where),
                        features=features, fid_column=None, geometry_type=",".join(types) or None,
                        _drop=[d for d in drop if d in pf.schema_arrow.names])


def _parquet_batches(src: ParcelSource) -> Iterator:
    try:
        pf = pq.ParquetFile(src.path)
        columns = [n for n in pf.schema_arrow.names if n not in src._drop]
        for batch in pf.iter_batches(batch_size=BATCH_SIZE, columns=columns):
            names = [GEOMETRY if n == src.layer else n for n in batch.schema.names]
            yield pa.RecordBatch.from_arrays(batch.columns, names=names)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"parcel file {src.path} cannot be read ({one_line(exc, 200)}); check or re-export it") from None


# -- CRS -> EPSG ------------------------------------------------------------------------------
EPSG_TEXT = re.compile(r"^\s*EPSG:(\d+)\s*$", re.I)


def _resolve_srid(crs, override: int | None, where: str) -> int:
    """The EPSG code of a CRS given as 'EPSG:n', WKT or PROJJSON (dict); --srid when there is none."""
    found = _epsg_of(crs) if crs is not None else None
    if override is not None:
        if found is not None and found != override:
            raise UserError(f"{where} is in EPSG:{found}, not EPSG:{override}; drop --srid "
                            "(parcels are stored in their own CRS)")
        return override
    if found is not None:
        return found
    if crs is None:
        hint = " (the .prj next to the .shp is missing)" if where.lower().endswith(".shp") else ""
        raise UserError(f"{where} has no coordinate reference system{hint}; "
                        "add it, or pass --srid EPSG_CODE")
    raise UserError(f"{where} has a coordinate reference system without an EPSG code; "
                    "reproject it (e.g. ogr2ogr -t_srs EPSG:...) or pass --srid EPSG_CODE")


def _epsg_of(crs) -> int | None:
    if isinstance(crs, dict):
        ident = crs.get("id") or {}
        authority, code = str(ident.get("authority", "")).upper(), str(ident.get("code", ""))
        if authority == "EPSG" and code.isdigit():
            return int(code)
        if authority == "OGC" and code.upper() in ("CRS84", "CRS84H"):
            return 4326
        text = json.dumps(crs)
    else:
        text = str(crs)
        m = EPSG_TEXT.match(text)
        if m:
            return int(m.group(1))
        if text.upper().replace(":", "") in ("OGCCRS84", "CRS84"):
            return 4326
    try:
        return CRS.from_user_input(text).to_epsg()
    except Exception:  # an unparseable CRS is "no EPSG code": the caller says what to do
        return None
