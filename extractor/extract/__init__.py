"""The extraction engine: per parcel and scene zonal statistics into sigs / hists."""
