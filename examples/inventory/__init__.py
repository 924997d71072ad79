"""The inventory example: a small real service that joins TCC transactions and sagas."""

from examples.inventory.service import create_app, create_schema

__all__ = ["create_app", "create_schema"]
