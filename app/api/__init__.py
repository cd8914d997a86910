"""Mneme's REST API (FastAPI): long documents, jobs, stories and agent memories per tenant."""

from app.api.app import create_app

__all__ = ["create_app"]
