"""The cloud side of cbm-onboard: deployment specs, OpenStack provisioning, the sandbox cloud,
and host configuration with Ansible."""
