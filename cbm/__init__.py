"""cbm-onboard: put an EU paying agency on CDSE for CAP Checks by Monitoring, and keep it running."""

__version__ = "0.1.0"
