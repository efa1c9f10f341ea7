"""The extraction engine: per parcel and scene zonal statistics into sigs / hists.

Modules by concern (docs/extraction.md has the rules they implement):
  cards.py      what each card/resolution run reads (bands, band codes, file layout) and the statuses
  claims.py     atomic claims with leases, attempts, per-resolution run records, catalogue status
  guard.py      what stops a scene: its lease renewed and checked, its time bound, its storage calls
  storage.py    where the products are (mount, folder, S3), whether it answers, which failures are final
  vsi.py        GDAL's file-system calls rasterio does not expose (listing, stat, GDAL's VSI error)
  sources.py    locating band files in a product (listed, never guessed) and windowed reads
  rasterize.py  the rasterized parcels per (CRS, pixel grid), stored in PostGIS for all workers
  kernels.py    numba zonal statistics and SCL histograms (+ a plain NumPy reference)
  writer.py     COPY into sigs / hists
  worker.py     the loop of a worker (`cbm extract run`)
  prepare.py    rasterizing the parcels ahead for the grids of the catalogued scenes (`cbm extract prepare`)
  options.py    the options of a worker run, shared by `cbm extract run` and the entry point
  __main__.py   the worker's entry point in the extractor image: python -m extractor.extract run ...
"""
