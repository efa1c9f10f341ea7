"""The cloud layer: OpenStack (openstacksdk) only; imports only provision.cloud and extractor.

    spec.py            the deployment spec (YAML, validated on load)
    connection.py      connect, one-line SDK errors (api, describe), name lookups (resolve), waits
    ownership.py       which resources belong to a deployment (tags, marks): find -> Found
    common.py          the record of changes of an `up`, "one or none", "delete and wait"
    keypair.py  security_group.py  volume.py  servers.py  floating_ip.py   one reconciler per resource
    reconcile.py       up(spec, key, dry_run) -> UpResult, down(spec, key, ...) -> DownResult
    progress.py        progress lines on stderr (rich)

Apart from spec.load reading the spec, no module here reads or writes a local file: the caller hands
in the deployment's key and writes the inventory and known_hosts from what `up` returns.
"""
