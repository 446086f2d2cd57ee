"""Runs: the engine behind ``steerlab sweep``, ``eval``, ``prompt-eval``, ``calibrate`` and ``sdf eval``.

A run is (vectors + their random controls) x signed multipliers x claims x conditions x requests x
seeds; every combination is a *row*, and every finished row one *sample* of the run record
(:mod:`steerlab.harness.records`).

- :mod:`steerlab.runs.config`: the run config schemas (:class:`SweepConfig`, :class:`JudgeConfig`,
  :class:`AlignmentFakingConfig`), :func:`load_config`, :func:`make_scenario`.
- :mod:`steerlab.runs.rows`: arms, row expansion, the generation a row needs (shared rows collapse).
- :mod:`steerlab.runs.header`: the run header and the keys a resume must agree on.
- :mod:`steerlab.runs.engine`: :func:`check_config`, :func:`run_sweep` (rows -> requests ->
  backend -> samples appended, resume, the run's lock, ``then=``), :func:`converse`, sampling seeds.
- :mod:`steerlab.runs.summary`: plain scorers and run summaries, label summaries, their figures.
"""

from steerlab.runs.config import AlignmentFakingConfig, JudgeConfig, SweepConfig, load_config, make_scenario
from steerlab.runs.engine import Job, check_config, converse, run_sweep, sample_seed, turn_seed
from steerlab.runs.header import RESUME_KEYS, build_header, config_hash, describe_backend
from steerlab.runs.rows import NONE, Arm, Row, expand, load_arms
from steerlab.runs.summary import figure, label_figure, scorer, summarise, write_label_summary, write_summary

__all__ = [
    "NONE",
    "RESUME_KEYS",
    "AlignmentFakingConfig",
    "Arm",
    "Job",
    "JudgeConfig",
    "Row",
    "SweepConfig",
    "build_header",
    "check_config",
    "config_hash",
    "converse",
    "describe_backend",
    "expand",
    "figure",
    "label_figure",
    "load_arms",
    "load_config",
    "make_scenario",
    "run_sweep",
    "sample_seed",
    "scorer",
    "summarise",
    "turn_seed",
    "write_label_summary",
    "write_summary",
]
