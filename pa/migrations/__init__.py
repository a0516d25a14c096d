"""Alembic's migrations of pa's schema (env.py, versions/); pa.schema runs them."""
