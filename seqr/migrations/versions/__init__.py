"""Alembic revision scripts of the registry database (a package so that wheels include them)."""
