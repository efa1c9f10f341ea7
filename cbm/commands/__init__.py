"""One module per area of `cbm` commands: argument parsing and printing only.

Each module has `register(sub)`, which adds its commands to `cbm` (see cbm/cli.py COMMAND_MODULES);
the work itself is done by the operations (provision/ops), hosts, cloud and data (extractor) layers.
"""
