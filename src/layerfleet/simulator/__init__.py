"""Simulated printers: rendered webcam frames now; the simulated agent builds on them."""
