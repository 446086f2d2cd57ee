"""``steerlab pairs generate``: pair sets written by a model (registered on ``pairs`` by :mod:`steerlab.cli`)."""

from __future__ import annotations

import typer


def register(pairs_app: typer.Typer) -> None:
    """Add the command to the ``pairs`` group."""
