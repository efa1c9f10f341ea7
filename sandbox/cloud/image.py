"""Glance v2, read-only: the pre-seeded images (all backed by the sandbox host image)."""

from __future__ import annotations

from sandbox.cloud.base import router
from sandbox.cloud.http import Request, glance_error, paginate
from sandbox.cloud.state import Cloud

I = "/image/v2"


def view(cloud: Cloud, img: dict) -> dict:
    return {"id": img["id"], "name": img["name"], "status": "active", "visibility": "public", "protected": False,
            "os_hidden": False, "owner": cloud.data["project_id"], "disk_format": "qcow2",
            "container_format": "bare", "min_disk": 0, "min_ram": 0, "size": 277_000_000, "virtual_size": None,
            "checksum": None, "os_hash_algo": None, "os_hash_value": None, "tags": img.get("tags", []),
            "created_at": img["created_at"], "updated_at": img["created_at"],
            "os_distro": img.get("os_distro"), "os_version": img.get("os_version"),
            "self": f"/v2/images/{img['id']}", "file": f"/v2/images/{img['id']}/file", "schema": "/v2/schemas/image"}


@router.route("GET", I + "/images", kind="image.list", service="image")
def list_images(cloud: Cloud, req: Request):
    items = [view(cloud, i) for i in cloud.data["images"].values()]
    for key in ("name", "id", "status", "visibility", "os_distro"):
        if req.q(key) is not None:
            items = [i for i in items if str(i.get(key)) == req.q(key)]
    if req.q("os_hidden") is not None and req.q("os_hidden").lower() == "true":
        items = [i for i in items if i["os_hidden"]]
    items.sort(key=lambda i: (i["created_at"], i["id"]), reverse=True)
    page, extra = paginate(req, items, "images", style="glance", max_limit=cloud.data["page_size"])
    return 200, {"images": page, "first": "/v2/images", "schema": "/v2/schemas/images", **extra}


@router.route("GET", I + "/images/{image_id}", kind="image.get", service="image")
def get_image(cloud: Cloud, req: Request):
    img = cloud.data["images"].get(req.params["image_id"])
    if img is None:
        raise glance_error(404, f"No image found with ID {req.params['image_id']}")
    return 200, view(cloud, img)
