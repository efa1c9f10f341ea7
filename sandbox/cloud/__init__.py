"""A local cloud that speaks the OpenStack APIs and runs real hosts (containers, loop-device volumes).

    from sandbox.cloud import Sandbox
    sb = Sandbox(state_dir).start()      # background service; sb.clouds_yaml, sb.cloud_name, sb.env
    sb.inject("server.create", mode="error")   # fault injection (error | timeout | quota)
    sb.stop(purge=True)                  # remove every container, network, loop device and file
"""

from sandbox.cloud.control import CLOUD_NAME, Sandbox, code_version, default_state_dir  # noqa: F401
