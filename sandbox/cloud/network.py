"""Neutron v2.0: networks (a Docker bridge each), subnets, ports, floating IPs (an address on the
external Docker network, connected to the server's container), security groups and rules (enforced on
the hosts by firewall.py), tags, filters, pagination, NeutronError bodies."""

from __future__ import annotations

import ipaddress
import uuid

from sandbox.cloud import firewall
from sandbox.cloud.base import now, router
from sandbox.cloud.http import Request, neutron_error, paginate
from sandbox.cloud.state import Cloud

N = "/network/v2.0"
# path segment -> (singular json key, state collection, has tags)
COLLECTIONS = {
    "networks": ("network", "networks", True),
    "subnets": ("subnet", "subnets", True),
    "ports": ("port", "ports", True),
    "floatingips": ("floatingip", "floatingips", True),
    "security-groups": ("security_group", "security_groups", True),
    "security-group-rules": ("security_group_rule", "security_group_rules", False),
    "routers": ("router", "routers", True),
}
NOT_FOUND_TYPE = {"networks": "NetworkNotFound", "subnets": "SubnetNotFound", "ports": "PortNotFound",
                  "floatingips": "FloatingIPNotFound", "security-groups": "SecurityGroupNotFound",
                  "security-group-rules": "SecurityGroupRuleNotFound", "routers": "RouterNotFound"}
LABEL = {"networks": "Network", "subnets": "Subnet", "ports": "Port", "floatingips": "Floating IP",
         "security-groups": "Security group", "security-group-rules": "Security group rule", "routers": "Router"}
KIND = {"networks": "network", "subnets": "subnet", "ports": "port", "floatingips": "fip",
        "security-groups": "security_group", "security-group-rules": "security_group_rule", "routers": "router"}
QUOTA = {"networks": "network", "subnets": "subnet", "ports": "port", "floatingips": "floatingip",
         "security-groups": "security_group", "security-group-rules": "security_group_rule"}
EXTENSIONS = ["external-net", "router", "security-group", "standard-attr-tag", "tag-creation", "port-security",
              "quotas", "binding", "allowed-address-pairs", "standard-attr-description", "standard-attr-timestamp",
              "standard-attr-revisions", "fip-port-details", "net-mtu", "availability_zone", "project-id"]
# what shapes the hosts' security-group rules (addresses, memberships, rules): firewall.sync after a change
ENFORCED = {"ports", "floatingips", "security-groups", "security-group-rules"}
PAGING_KEYS = {"limit", "marker", "fields", "sort_key", "sort_dir", "page_reverse", "tags", "tags-any", "not-tags",
               "not-tags-any"}


def _base(cloud: Cloud, body: dict) -> dict:
    pid = cloud.data["project_id"]
    return {"id": str(uuid.uuid4()), "project_id": pid, "tenant_id": pid, "created_at": now(), "updated_at": now(),
            "revision_number": 0, "description": body.get("description") or "", "tags": list(body.get("tags") or [])}


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("cbm:")}


def _touch(obj: dict) -> None:
    obj["updated_at"] = now()
    obj["revision_number"] = obj.get("revision_number", 0) + 1


# -- constructors (also used by the seed and by nova) ------------------------------------------
def seed_networks(cloud: Cloud) -> None:
    """The networks of a new sandbox: private, eodata, and the external floating-IP pool; the default group."""
    admin_project = uuid.uuid4().hex
    for name, external, eodata in (("cbm-private", False, False), ("eodata", False, True),
                                   ("external", True, False)):
        net = new_network(cloud, {"name": name, "router:external": external})
        net["cbm:eodata"] = eodata
        subnet = {"network_id": net["id"], "name": f"{name}-subnet", "ip_version": 4}
        if eodata:  # like CloudFerro's eodata network: no gateway, so it is not a NAT destination
            subnet["gateway_ip"] = None
        if external:  # the floating-IP pool's subnet belongs to the admin project: tenants cannot see it
            net.update(project_id=admin_project, tenant_id=admin_project)
            subnet["cbm:hidden"] = True
        new_subnet(cloud, subnet)
    default = new_security_group(cloud, "default", "Default security group")
    for ethertype in ("IPv4", "IPv6"):  # as in Neutron: the members of the default group reach each other
        new_rule(cloud, {"security_group_id": default["id"], "direction": "ingress", "ethertype": ethertype,
                         "remote_group_id": default["id"]})


def new_network(cloud: Cloud, body: dict) -> dict:
    net = {**_base(cloud, body), "name": body.get("name") or "", "status": "ACTIVE",
           "admin_state_up": body.get("admin_state_up", True), "shared": False,
           "router:external": bool(body.get("router:external", False)), "subnets": [], "mtu": 1500,
           "port_security_enabled": True, "availability_zones": ["nova"], "availability_zone_hints": [],
           "ipv4_address_scope": None, "ipv6_address_scope": None, "is_default": False, "cbm:eodata": False}
    cloud.data["networks"][net["id"]] = net
    return net


def new_subnet(cloud: Cloud, body: dict) -> dict:
    net = cloud.data["networks"].get(body.get("network_id"))
    if net is None:
        raise neutron_error(404, f"Network {body.get('network_id')} could not be found.", "NetworkNotFound")
    if net["subnets"]:
        raise neutron_error(400, "The sandbox supports one subnet per network.", "BadRequest")
    if int(body.get("ip_version", 4)) != 4:
        raise neutron_error(400, "Only IPv4 subnets are supported by the sandbox.", "BadRequest")
    taken = {s["cidr"] for s in cloud.data["subnets"].values()} | set(body.get("cbm:taken") or ())
    try:
        cidr = ipaddress.ip_network(body.get("cidr") or cloud.backend.free_cidr(taken))
    except ValueError:
        raise neutron_error(400, f"Invalid input for cidr. Reason: '{body.get('cidr')}' is not a valid IP subnet.",
                            "HTTPBadRequest") from None
    if not body.get("cidr"):  # our pick may race with another sandbox starting: try the next free /24
        for _ in range(8):
            try:
                cloud.backend.ensure_network(net["id"], str(cidr), str(next(cidr.hosts())))
                break
            except Exception:
                taken.add(str(cidr))
                cidr = ipaddress.ip_network(cloud.backend.free_cidr(taken))
    hosts = list(cidr.hosts())
    gateway = body.get("gateway_ip", str(hosts[0]))  # an explicit null: no gateway (docker still needs one)
    sub = {**_base(cloud, body), "name": body.get("name") or "", "network_id": net["id"], "cidr": str(cidr),
           "ip_version": 4, "gateway_ip": gateway, "enable_dhcp": True,
           "allocation_pools": [{"start": str(hosts[1]), "end": str(hosts[-1])}],
           "dns_nameservers": [], "host_routes": [], "subnetpool_id": None, "ipv6_address_mode": None,
           "ipv6_ra_mode": None, "service_types": [], "cbm:docker_gateway": str(hosts[0]),
           "cbm:hidden": bool(body.get("cbm:hidden"))}
    try:
        cloud.backend.ensure_network(net["id"], sub["cidr"], sub["cbm:docker_gateway"])
    except Exception as exc:
        raise neutron_error(409, f"Cannot create the network for {cidr}: {exc}", "InvalidInput") from None
    cloud.data["subnets"][sub["id"]] = sub
    net["subnets"].append(sub["id"])
    return sub


def default_rules(cloud: Cloud, sg_id: str) -> list[dict]:
    rules = []
    for ethertype in ("IPv4", "IPv6"):
        rules.append(new_rule(cloud, {"security_group_id": sg_id, "direction": "egress", "ethertype": ethertype}))
    return rules


def new_security_group(cloud: Cloud, name: str, description: str = "", tags=None) -> dict:
    sg = {**_base(cloud, {"description": description, "tags": tags}), "name": name, "stateful": True,
          "shared": False}
    cloud.data["security_groups"][sg["id"]] = sg
    default_rules(cloud, sg["id"])
    return sg


def new_rule(cloud: Cloud, body: dict) -> dict:
    sg_id = body.get("security_group_id")
    if sg_id not in cloud.data["security_groups"]:
        raise neutron_error(404, f"Security group {sg_id} could not be found.", "SecurityGroupNotFound")
    direction = body.get("direction")
    if direction not in ("ingress", "egress"):
        raise neutron_error(400, f"Invalid input for direction. Reason: {direction!r} is not in "
                                 "['ingress', 'egress'].", "HTTPBadRequest")
    ethertype = body.get("ethertype") or "IPv4"
    if ethertype not in ("IPv4", "IPv6"):
        raise neutron_error(400, f"Invalid input for ethertype. Reason: {ethertype!r} is not in "
                                 "['IPv4', 'IPv6'].", "HTTPBadRequest")
    protocol = body.get("protocol")
    if protocol is not None:
        protocol = str(protocol).lower()
        if protocol not in ("tcp", "udp", "icmp", "icmpv6", "any") and not protocol.isdigit():
            raise neutron_error(400, f"Security group rule protocol {protocol} not supported.",
                                "SecurityGroupRuleInvalidProtocol")
    pmin, pmax = body.get("port_range_min"), body.get("port_range_max")
    if pmin is not None and pmax is not None and int(pmin) > int(pmax):
        raise neutron_error(400, "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                            "SecurityGroupInvalidPortRange")
    prefix = body.get("remote_ip_prefix")
    if prefix is not None:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise neutron_error(400, f"Invalid input for remote_ip_prefix. Reason: '{prefix}' is not a valid IP "
                                     "prefix.", "HTTPBadRequest") from None
        if (net.version == 4) != (ethertype == "IPv4"):
            raise neutron_error(400, f"Conflicting value ethertype {ethertype} for CIDR {prefix}",
                                "SecurityGroupRuleParameterConflict")
        prefix = str(net)
    rule = {**_base(cloud, body), "security_group_id": sg_id, "direction": direction, "ethertype": ethertype,
            "protocol": protocol, "port_range_min": None if pmin is None else int(pmin),
            "port_range_max": None if pmax is None else int(pmax), "remote_ip_prefix": prefix,
            "normalized_cidr": prefix, "remote_group_id": body.get("remote_group_id"),
            "remote_address_group_id": None, "belongs_to_default_sg": False}
    rule.pop("tags")
    key = ("security_group_id", "direction", "ethertype", "protocol", "port_range_min", "port_range_max",
           "remote_ip_prefix", "remote_group_id")
    for other in cloud.data["security_group_rules"].values():
        if all(other.get(k) == rule.get(k) for k in key):
            raise neutron_error(409, f"Security group rule already exists. Rule id is {other['id']}.",
                                "SecurityGroupRuleExists")
    cloud.data["security_group_rules"][rule["id"]] = rule
    return rule


def subnet_of(cloud: Cloud, network_id: str) -> dict:
    net = cloud.data["networks"][network_id]
    if not net["subnets"]:
        raise neutron_error(400, f"Network {network_id} has no subnet: cannot allocate an address.", "BadRequest")
    return cloud.data["subnets"][net["subnets"][0]]


def used_addresses(cloud: Cloud, subnet: dict) -> set[str]:
    used = {subnet["gateway_ip"], subnet["cbm:docker_gateway"]}
    for port in cloud.data["ports"].values():
        used |= {ip["ip_address"] for ip in port["fixed_ips"] if ip["subnet_id"] == subnet["id"]}
    for fip in cloud.data["floatingips"].values():
        if fip["floating_network_id"] == subnet["network_id"]:
            used.add(fip["floating_ip_address"])
    return used


def allocate_ip(cloud: Cloud, subnet: dict, wanted: str | None = None) -> str:
    used = used_addresses(cloud, subnet)
    cidr = ipaddress.ip_network(subnet["cidr"])
    if wanted:
        if ipaddress.ip_address(wanted) not in cidr:
            raise neutron_error(400, f"IP address {wanted} is not a valid IP for the specified subnet.",
                                "InvalidIpForSubnet")
        if wanted in used:
            raise neutron_error(409, f"IP address {wanted} already allocated in subnet {subnet['id']}",
                                "IpAddressAlreadyAllocated")
        return wanted
    pool = subnet["allocation_pools"][0]
    start, end = ipaddress.ip_address(pool["start"]), ipaddress.ip_address(pool["end"])
    for host in cidr.hosts():
        if start <= host <= end and str(host) not in used:
            return str(host)
    raise neutron_error(409, f"No more IP addresses available on network {subnet['network_id']}.",
                        "IpAddressGenerationFailure")


def mac_for(ip: str) -> str:
    """Docker derives a container's MAC from its IPv4 address the same way."""
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def new_port(cloud: Cloud, body: dict) -> dict:
    net = cloud.data["networks"].get(body.get("network_id"))
    if net is None:
        raise neutron_error(404, f"Network {body.get('network_id')} could not be found.", "NetworkNotFound")
    cloud.quota_check("network", "port", len(cloud.data["ports"]))
    subnet = subnet_of(cloud, net["id"])
    wanted = None
    for fixed in body.get("fixed_ips") or []:
        wanted = fixed.get("ip_address") or wanted
    ip = allocate_ip(cloud, subnet, wanted)
    sgs = body.get("security_groups")
    if sgs is None:
        sgs = [s["id"] for s in cloud.data["security_groups"].values() if s["name"] == "default"][:1]
    for sg in sgs:
        if sg not in cloud.data["security_groups"]:
            raise neutron_error(404, f"Security group {sg} could not be found.", "SecurityGroupNotFound")
    port = {**_base(cloud, body), "name": body.get("name") or "", "network_id": net["id"],
            "device_id": body.get("device_id") or "", "device_owner": body.get("device_owner") or "",
            "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": ip}], "mac_address": mac_for(ip),
            "status": "DOWN", "admin_state_up": True, "security_groups": list(sgs),
            "binding:vnic_type": "normal", "allowed_address_pairs": [], "extra_dhcp_opts": [],
            "port_security_enabled": True, "dns_name": "", "dns_assignment": []}
    cloud.data["ports"][port["id"]] = port
    return port


def server_of_port(cloud: Cloud, port: dict) -> dict | None:
    srv = cloud.data["servers"].get(port.get("device_id") or "")
    return srv


def external_docker_net(cloud: Cloud, fip: dict) -> str:
    return cloud.backend.network_name(fip["floating_network_id"])


def connect_fip(cloud: Cloud, fip: dict) -> None:
    """Put the floating address on the server's container (when it runs)."""
    port = cloud.data["ports"].get(fip.get("port_id") or "")
    srv = server_of_port(cloud, port) if port else None
    if srv and srv.get("container") and cloud.backend.container_state(srv["container"]) in ("running", "created",
                                                                                             "exited"):
        cloud.backend.connect(srv["container"], external_docker_net(cloud, fip), fip["floating_ip_address"])


def disconnect_fip(cloud: Cloud, fip: dict) -> None:
    port = cloud.data["ports"].get(fip.get("port_id") or "")
    srv = server_of_port(cloud, port) if port else None
    if srv and srv.get("container"):
        cloud.backend.disconnect(srv["container"], external_docker_net(cloud, fip))


def associate(cloud: Cloud, fip: dict, port_id: str | None, fixed_ip: str | None = None) -> None:
    if port_id == fip.get("port_id"):
        return
    if fip.get("port_id"):
        disconnect_fip(cloud, fip)
        fip.update(port_id=None, fixed_ip_address=None, status="DOWN", router_id=None)
    if port_id:
        port = cloud.data["ports"].get(port_id)
        if port is None:
            raise neutron_error(404, f"Port {port_id} could not be found.", "PortNotFound")
        for other in cloud.data["floatingips"].values():
            if other is not fip and other.get("port_id") == port_id:
                raise neutron_error(409, f"Cannot associate floating IP {fip['floating_ip_address']} "
                                         f"({fip['id']}) with port {port_id} using fixed IP "
                                         f"{port['fixed_ips'][0]['ip_address']}, as that fixed IP already has a "
                                         f"floating IP on external network {other['floating_network_id']}.",
                                    "FloatingIPPortAlreadyAssociated")
        fip.update(port_id=port_id, fixed_ip_address=fixed_ip or port["fixed_ips"][0]["ip_address"],
                   status="ACTIVE", router_id=None)
        connect_fip(cloud, fip)
    _touch(fip)


def new_floatingip(cloud: Cloud, body: dict) -> dict:
    net = cloud.data["networks"].get(body.get("floating_network_id"))
    if net is None:
        raise neutron_error(404, f"Network {body.get('floating_network_id')} could not be found.",
                            "NetworkNotFound")
    if not net["router:external"]:
        raise neutron_error(400, f"Bad floatingip request: Network {net['id']} is not a valid external network.",
                            "BadRequest")
    cloud.quota_check("network", "floatingip", len(cloud.data["floatingips"]))
    subnet = subnet_of(cloud, net["id"])
    address = allocate_ip(cloud, subnet, body.get("floating_ip_address"))
    fip = {**_base(cloud, body), "floating_ip_address": address, "floating_network_id": net["id"],
           "router_id": None, "port_id": None, "fixed_ip_address": None, "status": "DOWN", "dns_name": "",
           "dns_domain": "", "port_details": None, "port_forwardings": [], "qos_policy_id": None}
    cloud.data["floatingips"][fip["id"]] = fip
    if body.get("port_id"):
        try:
            associate(cloud, fip, body["port_id"], body.get("fixed_ip_address"))
        except Exception:
            del cloud.data["floatingips"][fip["id"]]
            raise
    return fip


def delete_port(cloud: Cloud, port: dict) -> None:
    """Remove a port; its floating IPs become unassociated (not deleted)."""
    for fip in cloud.data["floatingips"].values():
        if fip.get("port_id") == port["id"]:
            disconnect_fip(cloud, fip)
            fip.update(port_id=None, fixed_ip_address=None, status="DOWN")
            _touch(fip)
    srv = server_of_port(cloud, port)
    if srv is not None:
        if port["id"] in srv["port_ids"]:
            srv["port_ids"].remove(port["id"])
        if srv.get("container"):
            cloud.backend.disconnect(srv["container"], cloud.backend.network_name(port["network_id"]))
    cloud.data["ports"].pop(port["id"], None)


# -- views -------------------------------------------------------------------------------------
def view(cloud: Cloud, seg: str, obj: dict) -> dict:
    out = _public(obj)
    if seg == "security-groups":
        out["security_group_rules"] = [dict(r) for r in cloud.data["security_group_rules"].values()
                                       if r["security_group_id"] == obj["id"]]
    elif seg == "floatingips" and obj.get("port_id"):
        port = cloud.data["ports"].get(obj["port_id"])
        if port:
            out["port_details"] = {"name": port["name"], "network_id": port["network_id"],
                                   "mac_address": port["mac_address"], "admin_state_up": True,
                                   "status": port["status"], "device_id": port["device_id"],
                                   "device_owner": port["device_owner"]}
    elif seg == "ports":
        out["dns_assignment"] = [{"hostname": "host-" + ip["ip_address"].replace(".", "-"),
                                  "ip_address": ip["ip_address"], "fqdn": ""} for ip in obj["fixed_ips"]]
    return out


def _match(value, wanted: list[str]) -> bool:
    if isinstance(value, bool):
        return str(value).lower() in [w.lower() for w in wanted]
    if isinstance(value, list):  # e.g. fixed_ips, security_groups
        return any(str(v) in wanted for v in value) if value and not isinstance(value[0], dict) else False
    return str(value) in wanted if value is not None else any(w in ("", "None") for w in wanted)


def filter_items(req: Request, items: list[dict]) -> list[dict]:
    for key, values in req.query.items():
        if key in PAGING_KEYS:
            continue
        if key == "fixed_ips":
            wanted = [v.split("=", 1)[1] for v in values if "=" in v]
            items = [i for i in items if any(f"{ip['ip_address']}" in wanted or ip["subnet_id"] in wanted
                                             for ip in i.get("fixed_ips", []))]
            continue
        items = [i for i in items if key not in i or _match(i[key], values)]
    tags, any_tags = set(req.qlist("tags")), set(req.qlist("tags-any"))
    not_tags, not_any = set(req.qlist("not-tags")), set(req.qlist("not-tags-any"))
    if tags:
        items = [i for i in items if tags <= set(i.get("tags", []))]
    if any_tags:
        items = [i for i in items if any_tags & set(i.get("tags", []))]
    if not_tags:
        items = [i for i in items if not not_tags <= set(i.get("tags", []))]
    if not_any:
        items = [i for i in items if not not_any & set(i.get("tags", []))]
    return items


def _fields(req: Request, obj: dict) -> dict:
    fields = req.query.get("fields")
    return {k: v for k, v in obj.items() if k in fields} if fields else obj


def _get(cloud: Cloud, seg: str, obj_id: str) -> dict:
    obj = cloud.data[COLLECTIONS[seg][1]].get(obj_id)
    if obj is None or obj.get("cbm:hidden"):
        raise neutron_error(404, f"{LABEL[seg]} {obj_id} could not be found.", NOT_FOUND_TYPE[seg])
    return obj


# -- generic routes ----------------------------------------------------------------------------
def _register(seg: str) -> None:
    singular, coll, tagged = COLLECTIONS[seg]
    kind = KIND[seg]

    @router.route("GET", f"{N}/{seg}", kind=f"{kind}.list", service="network")
    def list_(cloud: Cloud, req: Request):
        with cloud.lock:
            items = [view(cloud, seg, o) for o in cloud.data[coll].values() if not o.get("cbm:hidden")]
        items = filter_items(req, items)
        page, extra = paginate(req, items, coll, max_limit=cloud.data["page_size"])
        return 200, {coll: [_fields(req, o) for o in page], **extra}

    @router.route("GET", f"{N}/{seg}/{{obj_id}}", kind=f"{kind}.get", service="network")
    def get(cloud: Cloud, req: Request):
        with cloud.lock:
            return 200, {singular: _fields(req, view(cloud, seg, _get(cloud, seg, req.params["obj_id"])))}

    @router.route("POST", f"{N}/{seg}", kind=f"{kind}.create", service="network")
    def create(cloud: Cloud, req: Request):
        body = (req.body or {}).get(singular)
        if not isinstance(body, dict):
            raise neutron_error(400, f"Resource body required: expected {singular!r}.", "HTTPBadRequest")
        body = {k: v for k, v in body.items() if not k.startswith("cbm:")}
        with cloud.lock:
            if seg in QUOTA and seg not in ("ports", "floatingips"):
                cloud.quota_check("network", QUOTA[seg], len(cloud.data[coll]))
            obj = CREATORS[seg](cloud, body)
            if seg in ENFORCED:
                firewall.sync(cloud)
            cloud.save()
            return 201, {singular: view(cloud, seg, obj)}

    @router.route("PUT", f"{N}/{seg}/{{obj_id}}", kind=f"{kind}.update", service="network")
    def update(cloud: Cloud, req: Request):
        body = (req.body or {}).get(singular)
        if not isinstance(body, dict):
            raise neutron_error(400, f"Resource body required: expected {singular!r}.", "HTTPBadRequest")
        with cloud.lock:
            obj = _get(cloud, seg, req.params["obj_id"])
            if seg == "floatingips" and "port_id" in body:
                associate(cloud, obj, body["port_id"], body.get("fixed_ip_address"))
            for key in ("name", "description", "admin_state_up", "security_groups"):
                if key in body and key in obj:
                    obj[key] = body[key]
            _touch(obj)
            if seg in ENFORCED:
                firewall.sync(cloud)
            cloud.save()
            return 200, {singular: view(cloud, seg, obj)}

    @router.route("DELETE", f"{N}/{seg}/{{obj_id}}", kind=f"{kind}.delete", service="network")
    def delete(cloud: Cloud, req: Request):
        with cloud.lock:
            obj = _get(cloud, seg, req.params["obj_id"])
            DELETERS[seg](cloud, obj)
            if seg in ENFORCED:
                firewall.sync(cloud)
            cloud.save()
            return 204, None

    if not tagged:
        return

    @router.route("GET", f"{N}/{seg}/{{obj_id}}/tags", kind=f"{kind}.tags", service="network")
    def get_tags(cloud: Cloud, req: Request):
        return 200, {"tags": list(_get(cloud, seg, req.params["obj_id"])["tags"])}

    @router.route("PUT", f"{N}/{seg}/{{obj_id}}/tags", kind=f"{kind}.tags", service="network")
    def put_tags(cloud: Cloud, req: Request):
        tags = (req.body or {}).get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise neutron_error(400, "Invalid input for tags: a list of non-empty strings is required.",
                                "HTTPBadRequest")
        with cloud.lock:
            obj = _get(cloud, seg, req.params["obj_id"])
            obj["tags"] = sorted(set(tags))
            _touch(obj)
            cloud.save()
            return 200, {"tags": obj["tags"]}

    @router.route("DELETE", f"{N}/{seg}/{{obj_id}}/tags", kind=f"{kind}.tags", service="network")
    def delete_tags(cloud: Cloud, req: Request):
        with cloud.lock:
            obj = _get(cloud, seg, req.params["obj_id"])
            obj["tags"] = []
            _touch(obj)
            cloud.save()
            return 204, None

    @router.route("GET", f"{N}/{seg}/{{obj_id}}/tags/{{tag}}", kind=f"{kind}.tags", service="network")
    def get_tag(cloud: Cloud, req: Request):
        _tagged(cloud, seg, req)
        return 204, None

    @router.route("PUT", f"{N}/{seg}/{{obj_id}}/tags/{{tag}}", kind=f"{kind}.tags", service="network")
    def put_tag(cloud: Cloud, req: Request):
        with cloud.lock:
            obj = _get(cloud, seg, req.params["obj_id"])
            if req.params["tag"] not in obj["tags"]:
                obj["tags"] = sorted(set(obj["tags"]) | {req.params["tag"]})
                _touch(obj)
                cloud.save()
            return 201, None

    @router.route("DELETE", f"{N}/{seg}/{{obj_id}}/tags/{{tag}}", kind=f"{kind}.tags", service="network")
    def delete_tag(cloud: Cloud, req: Request):
        with cloud.lock:
            obj = _tagged(cloud, seg, req)
            obj["tags"].remove(req.params["tag"])
            _touch(obj)
            cloud.save()
            return 204, None


def _tagged(cloud: Cloud, seg: str, req: Request) -> dict:
    """The object of a `.../tags/{tag}` request; 404 TagNotFound unless it has that tag."""
    obj = _get(cloud, seg, req.params["obj_id"])
    if req.params["tag"] not in obj["tags"]:
        raise neutron_error(404, f"Tag {req.params['tag']} could not be found.", "TagNotFound")
    return obj


def _create_router(cloud: Cloud, body: dict) -> dict:
    r = {**_base(cloud, body), "name": body.get("name") or "", "status": "ACTIVE", "admin_state_up": True,
         "external_gateway_info": body.get("external_gateway_info"), "routes": [], "distributed": False,
         "ha": False, "availability_zones": ["nova"], "availability_zone_hints": [], "flavor_id": None}
    cloud.data["routers"][r["id"]] = r
    return r


def _create_sg(cloud: Cloud, body: dict) -> dict:
    return new_security_group(cloud, body.get("name") or "", body.get("description") or "", body.get("tags"))


def _create_rule(cloud: Cloud, body: dict) -> dict:
    cloud.quota_check("network", "security_group_rule", len(cloud.data["security_group_rules"]))
    return new_rule(cloud, body)


def _delete_network(cloud: Cloud, net: dict) -> None:
    if any(p["network_id"] == net["id"] for p in cloud.data["ports"].values()) or \
            any(f["floating_network_id"] == net["id"] for f in cloud.data["floatingips"].values()):
        raise neutron_error(409, f"Unable to complete operation on network {net['id']}. There are one or more "
                                 "ports still in use on the network.", "NetworkInUse")
    for sid in net["subnets"]:
        cloud.data["subnets"].pop(sid, None)
    cloud.backend.remove_network(net["id"])
    del cloud.data["networks"][net["id"]]


def _delete_subnet(cloud: Cloud, sub: dict) -> None:
    if any(ip["subnet_id"] == sub["id"] for p in cloud.data["ports"].values() for ip in p["fixed_ips"]):
        raise neutron_error(409, f"Unable to complete operation on subnet {sub['id']}: One or more ports have an "
                                 "IP allocation from this subnet.", "SubnetInUse")
    net = cloud.data["networks"].get(sub["network_id"])
    if net:
        net["subnets"].remove(sub["id"])
    cloud.backend.remove_network(sub["network_id"])
    del cloud.data["subnets"][sub["id"]]


def _delete_sg(cloud: Cloud, sg: dict) -> None:
    if any(sg["id"] in p["security_groups"] for p in cloud.data["ports"].values()):
        raise neutron_error(409, f"Security Group {sg['id']} in use.", "SecurityGroupInUse")
    if sg["name"] == "default":
        raise neutron_error(409, "Insufficient rights for removing default security group.",
                            "SecurityGroupCannotRemoveDefault")
    for rid in [r["id"] for r in cloud.data["security_group_rules"].values() if r["security_group_id"] == sg["id"]]:
        del cloud.data["security_group_rules"][rid]
    del cloud.data["security_groups"][sg["id"]]


def _delete_fip(cloud: Cloud, fip: dict) -> None:
    disconnect_fip(cloud, fip)
    del cloud.data["floatingips"][fip["id"]]


CREATORS = {"networks": new_network, "subnets": new_subnet, "ports": new_port, "floatingips": new_floatingip,
            "security-groups": _create_sg, "security-group-rules": _create_rule, "routers": _create_router}
DELETERS = {"networks": _delete_network, "subnets": _delete_subnet, "ports": delete_port,
            "floatingips": _delete_fip, "security-groups": _delete_sg,
            "security-group-rules": lambda c, r: c.data["security_group_rules"].pop(r["id"]),
            "routers": lambda c, r: c.data["routers"].pop(r["id"])}

for _seg in COLLECTIONS:
    _register(_seg)


@router.route("GET", N, kind="network.discovery", service="network")
def resources(cloud: Cloud, req: Request):
    return 200, {"resources": [{"name": s, "collection": COLLECTIONS[s][1],
                                "links": [{"rel": "self", "href": f"{req.base_url}{N}/{s}"}]} for s in COLLECTIONS]}


@router.route("GET", N + "/extensions", kind="extension.list", service="network")
def extensions(cloud: Cloud, req: Request):
    return 200, {"extensions": [{"alias": a, "name": a, "description": a, "updated": "2023-01-01T00:00:00-00:00",
                                 "links": []} for a in EXTENSIONS]}


@router.route("GET", N + "/quotas/{project_id}", kind="quota.get", service="network")
def quotas(cloud: Cloud, req: Request):
    q = cloud.data["quotas"]
    return 200, {"quota": {k: q[k] for k in ("floatingip", "security_group", "security_group_rule", "port",
                                             "network", "subnet")}}
