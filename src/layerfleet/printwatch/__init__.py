"""PrintWatch: the inference service that PrintWatch clients (the OctoPrint plugin, the Klipper
client) call with a webcam picture every few seconds, served by our own failure detector.

`keys` issues and manages the API keys and their devices, `payloads` reads what clients send,
`scoring` smooths the scores into levels and actions, `inference` runs the detector off the event
loop, and `service` holds the rules that decide each answer's status code.
"""
