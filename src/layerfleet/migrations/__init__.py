"""Alembic migrations and the registry of every table they cover (`tables`)."""
