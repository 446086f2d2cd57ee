"""The root of the ``steerlab`` command line: the app and its groups, the two consoles, and
:func:`run_app` (error handling for both entry points, ``steerlab`` and ``sdf``).

Errors a user can cause (:class:`~steerlab.errors.SteerlabError`) print one line and exit 2.
The command modules (:mod:`steerlab.cli.pairs`, ...) import this module and register their
commands on the groups below; this module imports none of them.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from steerlab.errors import SteerlabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Activation steering: contrastive pairs -> activation cache -> steering vectors -> experiments.",
)
pairs_app = typer.Typer(no_args_is_help=True, help="Contrastive pair sets: validate and clean.")
cache_app = typer.Typer(no_args_is_help=True, help="Activation caches: inspect.")
model_app = typer.Typer(no_args_is_help=True, help="Models: inspect what steerlab sees.")
vectors_app = typer.Typer(no_args_is_help=True, help="Vector files: inspect, score on other pairs.")


@app.callback()
def _root(
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Load model folders that hold only pickled weights (pytorch_model.bin)."
    ),
) -> None:
    """Activation steering: contrastive pairs -> activation cache -> steering vectors -> experiments."""
    if allow_pickle:  # read by steerlab.models wherever a model folder is resolved (vLLM workers too)
        os.environ["STEERLAB_ALLOW_PICKLE"] = "1"


app.add_typer(pairs_app, name="pairs")
app.add_typer(cache_app, name="cache")
app.add_typer(model_app, name="model")
app.add_typer(vectors_app, name="vectors")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def run_app(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> None:
    """Run a command line: a SteerlabError prints one line on stderr and exits with status 2.

    Usage errors (unknown option, missing argument) are typer's own and also exit 2.
    """
    try:
        typer_app(args=argv, prog_name=prog_name)
    except SteerlabError as exc:
        err.print(f"{prog_name}: error: {exc}", markup=False)
        sys.exit(2)
    except SystemExit as exc:  # typer turns Ctrl-C into exit status 130: say how to go on
        command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "")
        hint = RESUME_HINTS.get((prog_name, command))
        if exc.code == 130 and hint:
            err.print(f"{prog_name}: interrupted; {hint}", markup=False)
        raise


# What a command that was stopped with Ctrl-C keeps, and how to go on (extract says it itself).
_RERUN = "rerun the same command to resume: finished samples in the run directory are kept"
RESUME_HINTS = {
    **{("steerlab", c): _RERUN for c in ("sweep", "eval", "prompt-eval", "calibrate")},
    ("steerlab", "judge"): "rerun the same command: judgements already made are in the judge cache",
    ("sdf", "train"): "rerun the same command to resume from the last checkpoint in OUT/checkpoints",
    ("sdf", "gen"): "rerun the same command to resume: finished stages and documents are kept",
    ("sdf", "eval"): _RERUN,
}
