"""The ``steerlab`` command line: parse, call one library function, print.

:mod:`steerlab.cli.app` holds the root app, its groups, the consoles and :func:`run_app`;
:mod:`steerlab.cli.options` every shared option. Importing the command modules below registers
their commands on the app's groups (by decorators); they import ``app`` and ``options``, and
nothing in the package imports this module or a command module back.
"""

from __future__ import annotations

from steerlab.cli.app import app as _app
from steerlab.cli.app import err, out, run_app
from steerlab.cli.common import parse_layers

# isort: off
# Importing a command module registers its commands; the order is the order of `steerlab --help`.
from steerlab.cli import (  # noqa: F401, E402
    pairs,
    directions,
    steer,
    conditions,
    runs,
    heatmap,
    doses,
    side_effects,
    screen,
    figures,
    run_report,
    export,
)
# isort: on

__all__ = ["err", "main", "out", "parse_layers", "run_app"]


def main(argv: list[str] | None = None) -> None:
    """The ``steerlab`` entry point (see :func:`run_app`)."""
    run_app(_app, argv, "steerlab")
