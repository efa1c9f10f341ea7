"""GDAL's virtual file system calls that rasterio does not expose, on rasterio's own libgdal:
list one folder (not recursively), stat a file, and the error GDAL recorded for the last call
(its VSIE_* number: HTTP error, AWS access denied, bad keys, object or bucket not found).

Why: a worker must tell "the object is not there" (a final status for the scene) from "the
storage did not answer" (the scene goes back to the queue), and check at start that its S3
endpoint authenticates. GDAL records that distinction (cpl_vsi_error.h) but neither rasterio nor
pyogrio returns it. The calls go to the libgdal rasterio loaded (found in /proc/self/maps; pyogrio
may have loaded another one), so the GDAL config set by rasterio.Env (endpoint, retries) applies to
them too.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import rasterio._base  # noqa: F401 - loads rasterio's libgdal, the one we bind to

# cpl_vsi_error.h
FILE_ERROR, HTTP_ERROR = 1, 2
AWS_ERROR, AWS_ACCESS_DENIED, AWS_BUCKET_NOT_FOUND, AWS_OBJECT_NOT_FOUND = 5, 6, 7, 8
AWS_INVALID_CREDENTIALS, AWS_SIGNATURE_DOES_NOT_MATCH = 9, 10
# cpl_vsi.h: VSIStatExL flags
_STAT_EXISTS, _STAT_SIZE, _STAT_SET_ERROR = 0x1, 0x4, 0x8
_STAT_BUFFER = 512   # larger than struct stat64 on every Linux
_ST_SIZE_OFFSET = 48  # st_size in struct stat64 on x86_64 and aarch64

_lock = threading.Lock()
_gdal = None


@dataclass(frozen=True)
class VsiError:
    number: int    # VSIE_* (0: GDAL recorded no VSI error)
    message: str   # GDAL's text (VSI error, else the last CPL error)

    @property
    def not_found(self) -> bool:
        return self.number in (AWS_OBJECT_NOT_FOUND, AWS_BUCKET_NOT_FOUND)

    @property
    def refused_keys(self) -> bool:
        return self.number in (AWS_ACCESS_DENIED, AWS_INVALID_CREDENTIALS, AWS_SIGNATURE_DOES_NOT_MATCH)


def _lib():
    global _gdal
    with _lock:
        if _gdal is None:
            found = []
            with open("/proc/self/maps") as maps:
                for line in maps:
                    name = line.rsplit(" ", 1)[-1].strip()
                    if "/libgdal" in name and ".so" in name and name not in found:
                        found.append(name)
            # other packages bring their own libgdal (pyogrio's wheel): take rasterio's, the one
            # its wheel vendors (rasterio.libs/), else one no other wheel vendors (a system GDAL)
            ours = [p for p in found if "/rasterio" in p] or [p for p in found if ".libs/" not in p]
            if not ours:
                raise OSError(f"rasterio's libgdal is not among the loaded ones ({', '.join(found) or 'none'})")
            path = ours[0]
            lib = ctypes.CDLL(path)
            lib.VSIReadDirEx.restype = ctypes.POINTER(ctypes.c_char_p)
            lib.VSIReadDirEx.argtypes = [ctypes.c_char_p, ctypes.c_int]
            lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
            lib.VSIStatExL.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
            lib.VSIStatExL.restype = ctypes.c_int
            lib.VSIGetLastErrorNo.restype = ctypes.c_int
            lib.VSIGetLastErrorMsg.restype = ctypes.c_char_p
            lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
            lib.CPLGetLastErrorNo.restype = ctypes.c_int
            lib.CPLPushErrorHandler.argtypes = [ctypes.c_void_p]
            _gdal = lib
    return _gdal


def _reset(lib) -> None:
    lib.VSIErrorReset()
    lib.CPLErrorReset()


class _quiet:
    """GDAL's errors of a call whose failure we expect and read ourselves (last_error) go to GDAL's
    quiet handler, not to rasterio's (which logs them as warnings)."""

    def __init__(self, lib):
        self.lib = lib

    def __enter__(self):
        self.lib.CPLPushErrorHandler(ctypes.cast(self.lib.CPLQuietErrorHandler, ctypes.c_void_p))

    def __exit__(self, *exc):
        self.lib.CPLPopErrorHandler()


def last_error() -> VsiError:
    lib = _lib()
    number = lib.VSIGetLastErrorNo()
    message = (lib.VSIGetLastErrorMsg() or b"").decode("utf-8", "replace")
    if not message:
        message = (lib.CPLGetLastErrorMsg() or b"").decode("utf-8", "replace")
    return VsiError(number, " ".join(message.split()))


def read_dir(path: str, max_files: int = 0) -> tuple[list[str] | None, VsiError]:
    """The names in a folder (at most max_files when > 0), or None with GDAL's error when it cannot
    be listed (it does not exist, or the storage failed: tell them apart with `error.number`)."""
    lib = _lib()
    _reset(lib)
    with _quiet(lib):
        names = lib.VSIReadDirEx(path.encode(), max_files)
        error = last_error()
    if not names:
        return None, error
    out = []
    try:
        i = 0
        while names[i] is not None:
            name = names[i].decode("utf-8", "replace")
            if name not in (".", ".."):
                out.append(name)
            i += 1
    finally:
        lib.CSLDestroy(names)
    return sorted(out), error


def stat_size(path: str) -> tuple[int | None, VsiError]:
    """The size of a file, or None with GDAL's error (not found, refused, no answer)."""
    lib = _lib()
    _reset(lib)
    buf = ctypes.create_string_buffer(_STAT_BUFFER)
    with _quiet(lib):
        failed = lib.VSIStatExL(path.encode(), buf, _STAT_EXISTS | _STAT_SIZE | _STAT_SET_ERROR) != 0
        error = last_error()
    if failed:
        return None, error
    return int.from_bytes(buf.raw[_ST_SIZE_OFFSET:_ST_SIZE_OFFSET + 8], "little", signed=True), VsiError(0, "")


def set_path_options(prefix: str, options: dict[str, str]) -> None:
    """GDAL config options for every file under `prefix` (e.g. /vsis3/eodata), whatever rasterio.Env
    is active: how S3 keys reach GDAL (rasterio.Env refuses them as options, and a nested Env drops a
    session's keys). An empty dict clears them."""
    lib = _lib()
    lib.VSIClearPathSpecificOptions(prefix.encode())
    for key, value in options.items():
        lib.VSISetPathSpecificOption(prefix.encode(), key.encode(), value.encode())


def clear_cache() -> None:
    """Forget GDAL's cached listings and object facts (after a storage fault, nothing cached is trusted)."""
    _lib().VSICurlClearCache()


def network_stats_reset() -> None:
    """Start counting again (needs CPL_VSIL_NETWORK_STATS_ENABLED=YES in the GDAL config)."""
    _lib().VSINetworkStatsReset()


def network_bytes() -> int:
    """Bytes GDAL downloaded over /vsicurl/ and /vsis3/ since the last reset (0 when not counted)."""
    import json  # lazy: only when the statistics are asked for

    lib = _lib()
    lib.VSINetworkStatsGetAsSerializedJSON.restype = ctypes.c_void_p
    lib.VSINetworkStatsGetAsSerializedJSON.argtypes = [ctypes.c_void_p]
    ptr = lib.VSINetworkStatsGetAsSerializedJSON(None)
    if not ptr:
        return 0
    try:
        stats = json.loads(ctypes.string_at(ptr).decode())
    finally:
        lib.VSIFree(ctypes.c_void_p(ptr))
    methods = stats.get("methods") or {}
    return sum(int(m.get("downloaded_bytes", 0)) for m in methods.values() if isinstance(m, dict))
