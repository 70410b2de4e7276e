"""Conveyor inside web frameworks and ORMs: Django's task framework, SQLAlchemy, Starlette/FastAPI.

Each module needs its framework installed (the ``django``, ``sqlalchemy`` and ``fastapi`` extras)
and uses only Conveyor's public API.
"""
