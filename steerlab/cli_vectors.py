"""``steerlab vectors score``: score a vector file on another pair set (registered on ``vectors`` by :mod:`steerlab.cli`)."""

from __future__ import annotations

import typer


def register(vectors_app: typer.Typer) -> None:
    """Add the command to the ``vectors`` group."""
