"""One family of errors for the whole domain. Every refusal a domain function makes is one of
these; each API dialect maps the family once, in its own format (Obico v1: Django REST
framework's shape; Eiger v3: ``{"message"}`` with an ``X-Reference-ID``; PrintWatch: its
status codes), so no adapter translates domain errors one by one.

The kinds also subclass the built-in exception a Python caller would expect (an unknown id is
a ``LookupError``, a bad value a ``ValueError``)."""

from __future__ import annotations


class DomainError(Exception):
    """A refusal; ``str(error)`` is the message shown to the API's user."""


class NotFound(DomainError, LookupError):
    """The object named does not exist (or belongs to another organization)."""


class Invalid(DomainError, ValueError):
    """A value the domain refuses; nothing was changed. ``fields`` names the values at fault
    when the caller can tell them apart (``{"field": ["message", …]}``)."""

    def __init__(self, message: str, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.fields = fields or {}


class Conflict(DomainError):
    """The request is valid but the state of things does not allow it now."""


class Forbidden(DomainError):
    """The caller's role does not allow this."""


class Unavailable(DomainError, RuntimeError):
    """A part the request needs (an agent, the slicer, the detector) cannot serve it now."""
