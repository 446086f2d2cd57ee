"""``steerlab figure KIND RUN_DIR... --out DIR``: the paper's figures from run records (issue 18)."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.app import app, out

figure_app = typer.Typer(no_args_is_help=True, help="The paper's figures, drawn from run directories.")
app.add_typer(figure_app, name="figure")

RUNS = typer.Argument(..., help="Run directories (steerlab eval / prompt-eval / sweep / sdf eval).")
OUT = typer.Option(..., "--out", help="Directory for KIND.png and KIND.json (the plotted numbers).")
SEED = typer.Option(0, "--seed", help="Seed of the bootstrap intervals.")


def _figure(kind: str, run_dirs: list[Path], out_dir: Path, seed: int) -> None:
    from steerlab.figures import make

    paths = make(kind, run_dirs, out_dir, seed=seed)
    out.print(f"wrote {', '.join(str(p) for p in paths)}")


def _command(kind: str, doc: str) -> None:
    def command(run_dirs: list[Path] = RUNS, out_dir: Path = OUT, seed: int = SEED) -> None:
        _figure(kind, run_dirs, out_dir, seed)

    command.__doc__ = doc
    figure_app.command(kind)(command)


_command("screening", "Fig. 2: monitored and unmonitored compliance per model, seeds as points, the gap annotated.")
_command("controls", "Fig. 10: compliance per condition and multiplier, every random control beside the real vector.")
_command("raw", "Fig. 14: raw-condition compliance per vector and multiplier against the unsteered floor.")
_command("strength", "Fig. 9: A_net and B_net at weak, standard and strong claim strength (prompt-eval runs).")
_command("sdf", "Figs. 3 and 8: the gap per SDF intervention against the organism's, A and B coloured apart.")
_command("directness", "Fig. 6: the gap per SDF intervention at each document directness.")
_command("naming", "Fig. 7: the gap with the original provider name beside a replaced one (--rename runs).")


@figure_app.command("all")
def all_figures(run_dirs: list[Path] = RUNS, out_dir: Path = OUT, seed: int = SEED) -> None:
    """Every figure the runs support; one line per kind skipped, saying why."""
    from steerlab.figures import make_all

    paths, skipped = make_all(run_dirs, out_dir, seed=seed)
    out.print(f"wrote {', '.join(str(p) for p in paths)}")
    for kind, why in skipped.items():
        out.print(f"skipped {kind}: {why}")
