"""Layerfleet: a self-hosted server for a farm of 3D printers."""

__version__ = "0.1.0"
