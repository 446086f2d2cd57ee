"""``steerlab figure KIND RUN_DIR... --out DIR``: the paper's figures from run records (issue 18)."""

from __future__ import annotations

import typer

from steerlab.cli.app import app

figure_app = typer.Typer(no_args_is_help=True, help="The paper's figures, drawn from run directories.")
app.add_typer(figure_app, name="figure")
