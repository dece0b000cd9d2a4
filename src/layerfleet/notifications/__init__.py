"""Notifications: events written to an outbox with what caused them, delivered to each
organization's targets (Apprise channels and signed webhooks) off the request path.

Emitters call :func:`layerfleet.notifications.outbox.record` in the transaction of the cause."""
