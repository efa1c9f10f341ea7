"""What a run of `cbm extract run --card C --res R` reads, and the statuses it writes.

Runs per card: s2 has three (-1 = SCL histograms at 20 m, 10 = 10 m bands, 20 = 20 m bands),
bs one (10), c6 one (20). Band lists come from the `extract` settings section.
"""

from __future__ import annotations

from dataclasses import dataclass

from extractor.errors import UserError

# Statuses written to extraction_runs.status and dias_catalogue.status (all fit varchar(24)).
INGESTED = "ingested"
INPROGRESS = "inprogress"
EXTRACTED = "extracted"
NO_PARCELS = "No parcels"
NO_BAND_FILE = "No band file"      # a band file (or the product folder) is not in the eodata tree
RIO_ERROR = "Rio error"            # the raster cannot be opened or decoded (truncated, corrupt)
PARCEL_SQL = "Parcel SQL"          # no rasterized parcels for the scene's CRS/grid and none can be built
MAX_ATTEMPTS = "Max attempts"      # claimed max_attempts times without finishing (workers died)
FINAL_ERRORS = (NO_BAND_FILE, RIO_ERROR, PARCEL_SQL, MAX_ATTEMPTS)

CARDS = ("s2", "bs", "c6")
RESOLUTIONS = {"s2": (-1, 10, 20), "bs": (10,), "c6": (20,)}


@dataclass(frozen=True)
class RunSpec:
    card: str
    res: int                # the run key: -1, 10 or 20
    bands: tuple[str, ...]  # band names as in the files (B04, SCL, VV)
    codes: tuple[str, ...]  # band codes written to sigs.band (char(3)): B04, VVb, VVc
    histogram: bool         # SCL class histograms into hists instead of sigs

    @property
    def pixel_res(self) -> int:
        """The nominal resolution of the files read (SCL is a 20 m band)."""
        return 20 if self.res == -1 else self.res


def _split(text: str, what: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in str(text or "").split(",") if x.strip())
    if not items:
        raise UserError(f"settings extract.{what} is empty; list the bands, e.g. B04,B08")
    return items


def card_runs(settings, card: str) -> tuple[int, ...]:
    """The runs that must all be done before a scene of this card is 'extracted'."""
    if card == "s2":
        try:
            runs = tuple(int(x) for x in _split(settings.extract.s2_runs, "s2_runs"))
        except ValueError:
            raise UserError("settings extract.s2_runs must be a list of -1, 10, 20; fix that value") from None
        if not set(runs) <= set(RESOLUTIONS["s2"]):
            raise UserError("settings extract.s2_runs must be a list of -1, 10, 20; fix that value")
        return runs
    return RESOLUTIONS[card]


def run_spec(settings, card: str, res: int) -> RunSpec:
    if card not in CARDS:
        raise UserError(f"unknown card '{card}'; use one of {', '.join(CARDS)}")
    if res not in RESOLUTIONS[card]:
        allowed = "|".join(str(r) for r in RESOLUTIONS[card])
        raise UserError(f"--res {res} is not a run of card {card}; use --res {allowed}")
    x = settings.extract
    if card == "s2":
        if res == -1:
            bands = _split(x.s2_scl_band, "s2_scl_band")
        else:
            bands = _split(getattr(x, f"s2_{res}_bands"), f"s2_{res}_bands")
        for b in bands:
            if len(b) > 3:
                raise UserError(f"settings extract: band name '{b}' is longer than 3 characters (sigs.band is char(3))")
        return RunSpec(card, res, bands, bands, histogram=(res == -1))
    bands = _split(getattr(x, f"{card}_bands"), f"{card}_bands")
    for b in bands:
        if b not in ("VV", "VH"):
            raise UserError(f"settings extract.{card}_bands: unknown band '{b}'; use VV and/or VH")
    suffix = "b" if card == "bs" else "c"
    return RunSpec(card, res, bands, tuple(b + suffix for b in bands), histogram=False)


class SceneError(Exception):
    """The scene cannot be extracted: `status` names the cause (short, for dias_catalogue),
    `detail` holds the full text (extraction_runs.detail)."""

    def __init__(self, status: str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
