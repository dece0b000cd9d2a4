"""`layerfleet agent`: the printer-side agent.

It speaks the Obico agent protocol to a server (ours or any Obico-compatible one) and talks
to a printer through a connector: OctoPrint, Moonraker, or the simulator.
"""
