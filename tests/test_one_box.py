"""`workers: 0`, the seed's KISS setup: one box runs PostGIS and the extraction service.

A deployment of its own on the sandbox cloud (one host, cheaper than the shared 3-host one):
up -> onboard the DK sample parcels with one card -> `cbm extract swarm` runs its tasks on the manager
and ends -> every scene of the card is done -> down leaves nothing.
"""

from __future__ import annotations

import pytest

from conftest import PARCEL_SAMPLES

pytestmark = pytest.mark.docker

PARCELS = PARCEL_SAMPLES / "dk_marker_2026" / "Marker_2026.shp"
START, END = "2026-04-01", "2026-04-30"
CARD = "c6"   # the cheapest card of the generated products: 4 small GeoTIFF scenes, one run


@pytest.mark.timeout(2400)   # a deployment of its own: up (a cold configure), onboard, extract, down
def test_one_box_extracts_every_scene_on_the_manager(sandbox, tmp_path_factory):
    from live import LiveDeployment, generated_products
    from sandbox.catalog_replay import CatalogReplay

    features = generated_products(sandbox)
    box = LiveDeployment(sandbox, tmp_path_factory.mktemp("onebox"), name="onebox", workers=0)
    try:
        box.cbm("up", str(box.spec), timeout=2400)
        assert not box.hosts["children"]["workers"]["hosts"]
        nodes = box.ssh("manager", 0, "sudo docker node ls --format '{{.Hostname}} {{.Status}} {{.ManagerStatus}}'")
        assert nodes.split() == ["cbm-onebox-manager", "Ready", "Leader"], nodes

        with CatalogReplay(features=features) as cat:
            box.cbm("onboard", str(box.spec), "--parcels", str(PARCELS), "--aoi", "dk", "--from", START, "--to", END,
                    "--cards", CARD, env={"CBM_CATALOG_URL": cat.url})
        scenes = box.query("SELECT count(*) FROM dias_catalogue WHERE card = %s", (CARD,))[0][0]
        assert scenes == sum(f["properties"]["productType"] == "CARD-COH6" for f in features["Sentinel1"]) > 0

        proc = box.cbm("extract", "swarm", str(box.spec), "--card", CARD, env={"CBM_EXTRACT_POLL": "1"})
        assert "1 worker(s) on the swarm" in proc.stdout, proc.stdout
        statuses = dict(box.query("SELECT status, count(*) FROM dias_catalogue WHERE card = %s GROUP BY 1", (CARD,)))
        assert set(statuses) <= {"extracted", "No parcels"} and statuses.get("extracted"), statuses
        assert box.query("SELECT count(*) FROM extraction_runs WHERE status = 'extracted'")[0][0] == statuses["extracted"]
        assert box.query("SELECT count(*) FROM sigs")[0][0] > 0
        assert "cbm-extract" not in box.ssh("manager", 0, "sudo docker service ls --format '{{.Name}}'")
    finally:
        box.cbm("down", str(box.spec), "--yes", "--no-backup", timeout=900)
    assert box.cloud_leftovers() == []
