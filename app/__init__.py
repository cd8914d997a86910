"""Composition root: settings, wiring, services, the CLI and (later) the REST API."""
