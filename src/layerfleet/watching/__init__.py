"""Watching prints: each webcam frame scored by the detector moves its print's decision state,
raises alerts and pauses a failing print (the reference server's rules, per print)."""
