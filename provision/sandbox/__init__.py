"""A local cloud that speaks the OpenStack APIs and runs real hosts (containers, loop-device volumes)."""
