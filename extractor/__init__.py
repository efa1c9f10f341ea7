"""The data side of cbm-onboard: settings, database schema, catalog sync, parcels, extraction."""
