"""Parcel batches (Arrow) as PostgreSQL reads them with COPY (CSV): the column types and the rows.

Kept apart from extractor/parcels.py because pyarrow takes a while to import: only a load needs it.
"""

from __future__ import annotations

import binascii
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.types as at

from extractor.parcel_files import GEOMETRY


def attributes(schema) -> list:
    """The attribute fields of a batch's schema (all but the geometry)."""
    return [f for f in schema if f.name != GEOMETRY]


def pg_type(t) -> str:
    """The PostgreSQL column type for the Arrow type `t`."""
    if at.is_dictionary(t):
        return pg_type(t.value_type)
    if at.is_boolean(t):
        return "boolean"
    if at.is_int8(t) or at.is_int16(t) or at.is_uint8(t):
        return "smallint"
    if at.is_int32(t) or at.is_uint16(t):
        return "integer"
    if at.is_int64(t) or at.is_uint32(t):
        return "bigint"
    if at.is_uint64(t) or at.is_decimal(t):
        return "numeric"
    if at.is_float16(t) or at.is_float32(t):
        return "real"
    if at.is_float64(t):
        return "double precision"
    if at.is_date(t):
        return "date"
    if at.is_timestamp(t):
        return "timestamp with time zone" if t.tz else "timestamp without time zone"
    if at.is_time(t):
        return "time without time zone"
    if at.is_binary(t) or at.is_large_binary(t) or at.is_fixed_size_binary(t):
        return "bytea"
    if t == pa.null():
        return "text"
    if at.is_string(t) or at.is_large_string(t):
        return "character varying"
    return "text"  # lists, structs, maps: JSON text


def hex_of(arr):
    """A binary Arrow array as a string array of lower-case hex, without a Python loop."""
    arr = arr.cast(pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    data = arr.buffers()[2]
    hexed = binascii.hexlify(memoryview(data)[start:end]) if data is not None and end > start else b""
    valid = arr.is_valid().buffers()[1] if arr.null_count else None
    return pa.Array.from_buffers(pa.large_string(), len(arr),
                                 [valid, pa.py_buffer((offsets - start) * 2), pa.py_buffer(hexed)])


def copyable(arr):
    """An Arrow column pyarrow's CSV writer renders the way PostgreSQL's COPY (CSV) reads it."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if at.is_dictionary(t):
        return copyable(arr.dictionary_decode())
    if t == pa.null():
        return pa.nulls(len(arr), pa.string())
    if at.is_binary(t) or at.is_large_binary(t) or at.is_fixed_size_binary(t):
        return pc.binary_join_element_wise(pa.scalar("\\x", pa.large_string()), hex_of(arr),
                                           pa.scalar("", pa.large_string()))
    if at.is_float16(t):
        return arr.cast(pa.float32())
    if at.is_decimal(t) or at.is_time(t):
        return arr.cast(pa.string())
    if pg_type(t) == "text" and not at.is_string(t):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in arr.to_pylist()],
                        pa.string())
    return arr


def csv_rows(batch, first: int, fid_column: str | None, attributes: list[str]):
    """A batch as COPY (CSV) input, a file-like object: the position in the file (from `first`),
    the feature id (`fid_column`, else the position), the `attributes` columns, the WKB geometry
    in hex."""
    n = pa.array(range(first, first + batch.num_rows), pa.int64())
    fid = batch.column(fid_column).cast(pa.int64()) if fid_column else n
    arrays = [n, fid] + [copyable(batch.column(name)) for name in attributes]
    arrays.append(hex_of(batch.column(GEOMETRY)))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))]), sink,
                    pacsv.WriteOptions(include_header=False))
    del arrays
    return pa.BufferReader(sink.getvalue())
