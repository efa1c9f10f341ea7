"""Stand-ins for the rehearsal (`./run demo`) and the tests, not part of the product.

  cloud/            a local cloud that speaks the OpenStack APIs; its servers are real hosts (containers)
  catalog_replay    a local stand-in of the CDSE catalog (resto) API, serving given products
  synthetic         synthetic S2 L2A and S1 CARD products in the real layouts
  localdb           a throwaway PostGIS server on loopback, for the tests
  rehearsal         the whole onboarding of a Member State on the sandbox cloud (`./run demo`)

Modules here may import the product; no product module imports them, except cbm/commands/sandbox.py
(`cbm sandbox start|stop|status`).
"""
