"""A run directory as an inspect_ai evaluation log (``steerlab export inspect RUN_DIR --out LOG``).

The log is built from inspect_ai's own types and written by its own writer (``write_eval_log``), so
``inspect view`` opens it, ``read_eval_log`` reads it, and inspect's rescoring (``inspect_ai.score``,
``inspect score``) applies to it. inspect_ai is an optional extra (``pip install 'steerlab[inspect]'``).
``LOG``'s suffix picks the format: ``.eval`` (inspect's default, a zip) or ``.json``.

The mapping, one :class:`EvalSample` per steerlab sample:

- ``id``: the steerlab sample (row) id; ``epoch`` 1. The row id already names its seed, so every id
  occurs once; inspect's epochs (the same id run again, reduced across epochs) would say otherwise.
- ``input``: the chat messages as sent (system + user, or the user turn alone in the raw condition),
  then the prefill as an assistant message (``metadata.prefill``) when the run had one.
- ``messages``: the conversation: the messages as sent, each assistant turn (its text as steerlab
  records it, the prefill included in the first) and the ``<NEXT/>`` user turn between turns.
  The prefill is part of the first turn's text here, not a message of its own.
- ``output``: the last turn (stop reason ``max_tokens`` for a turn that hit the token limit).
- ``target``: empty (the scenarios have no reference answer); ``metadata``: every other sample
  field (vector, arm, multiplier, condition, claim, item, seed, dose_kl, steering_multiplier, gated,
  steer_if, label, output, reasoning, the judge's model...) and ``cell`` (vector/arm|multiplier|claim|condition).
- ``scores``: ``compliance`` for labelled runs (1.0 when the label is ``compliant``, else 0.0: truncated
  and unparseable samples count as not compliant, as in steerlab's summaries; ``answer`` is the label);
  ``judge_<concept>`` per judge concept (the rubric score, the justification as ``explanation``; a
  judge error or a sample without reasoning is inspect's unscored value, NaN, with the reason);
  for a plain run with a scorer, that scorer's value on the sample's text, named after it. The run's files
  name a scorer (summary.json), but export runs only a regex or a function of ``steerlab.scorers`` from them:
  any other ``module:function`` is code, imported and run on every sample, so it is used only when named on the
  command line (``--scorer``), which also picks a scorer for any run (a labelled one included).

The results are computed by inspect's own metric functions (:func:`inspect_ai.log.recompute_metrics`
over the scorers recorded in the eval spec): ``accuracy`` (compliance) or ``mean`` (judge, plain score),
``stderr`` clustered by request (``item``: steerlab's unit of independence), and ``grouped`` per cell.
The headline ``accuracy``/``mean`` pools every sample of the log: real and control arms, every multiplier,
condition and claim together (the scorers' metadata says so); the per-cell values are the ``grouped`` ones.
These are sample means; steerlab's summaries average per-request means, which is the same number
whenever every request has as many scored samples in the cell (always, for a finished run without
judge errors). The intervals in ``summary.json`` (cluster bootstrap) travel in the log's metadata.

Reading a run never writes into it (an ``--out`` inside the run directory is refused); every input (run,
``--out``, the samples' fields that the log is built from) is checked before the log is written, and the log
is written atomically (a temporary file beside it, renamed), so a refused or failed export leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect as pyinspect
import json
import numbers
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import steerlab
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_path
from steerlab.fileio import check_out as _check_out
from steerlab.harness.records import FORMAT, HEADER, SAMPLES, SUMMARY, check_unique, read_header, read_samples

if TYPE_CHECKING:
    from inspect_ai.log import EvalLog, EvalSample

FORMATS = {".eval": "eval", ".json": "json"}
NEXT = "<NEXT/>"  # the user turn that asks a model to go on (steerlab.harness.parse.NEXT)
STOP = {"eos": "stop", "stop": "stop", "length": "max_tokens"}
EXPLAIN = {
    "compliant": "the output starts with <request_fully_accepted/>",
    "rejected": "the output does not start with <request_fully_accepted/>",
    "truncated": "the last turn hit the token limit before the output was complete",
    "unparseable": "no output was found",
}
# sample fields that become the inspect sample's id, input, messages or output (not metadata)
MAPPED = ("id", "messages", "system", "turns", "text", "judge")


@dataclass
class Exported:
    path: Path
    n_samples: int
    scorers: list[str]
    metrics: dict[str, float]  # "scorer/metric" -> value, the headline metrics of the log's results
    listed: bool  # whether inspect's log listings (inspect view on a folder, list_eval_logs) show it
    n_cells: int = 0  # the cells the headline metrics pool (see the module docstring)


# inspect lists a .eval file under any name, a .json one only under a name that starts with an ISO time
# (inspect_ai.log._file.is_log_file); read_eval_log and `inspect view` on the file itself read any name
LISTED_JSON = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}[:-]\d{2}[:-]\d{2}.*\.json$")


def require_inspect() -> None:
    try:
        import inspect_ai  # noqa: F401
    except ImportError:
        raise ConfigError(
            "steerlab export inspect needs the inspect_ai package (the inspect extra): pip install 'steerlab[inspect]'"
        ) from None


def check_out(out: Path, overwrite: bool, run_dir: Path | None = None) -> str:
    """The log's format from ``out``'s suffix; refuses an ``out`` that cannot or may not be written, or that
    lies inside ``run_dir`` (reading a run never writes into it, ``--overwrite`` or not)."""
    out = Path(out)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"--out {out}: name the log .eval (inspect's default format) or .json")
    # inside a run (read_run names what else a folder without a header is), a folder, existing, unwritable
    inside = (Path(run_dir),) if run_dir is not None and (Path(run_dir) / HEADER).is_file() else ()
    _check_out(out, overwrite, inside, "exporting")
    return fmt


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and samples of a finished (or stopped) run; one line naming what is wrong otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir} does not exist; give a run directory (steerlab eval / sweep --out)")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run directory")
    if not (run_dir / HEADER).exists() and (run_dir / "records.jsonl").exists():
        raise ConfigError(
            f"{run_dir} is a run of steerlab's first run format (the sweep's records.jsonl, before run directories "
            f"had a {HEADER}; this version reads format {FORMAT}); rerun it with this version into a new directory"
        )
    header = read_header(run_dir)
    samples = read_samples(run_dir)
    if not samples:
        raise ConfigError(f"{run_dir} has no samples to export (no finished sample in {SAMPLES}); run it first")
    check_unique(samples, run_dir / SAMPLES)
    bad = next((s for s in samples if not isinstance(s.get("id"), str) or not s.get("turns")), None)
    if bad is not None:
        raise ConfigError(
            f"{run_dir / SAMPLES}: sample {bad.get('id')!r} has no id or no turns; it was not written by steerlab's "
            "run engine, so it cannot be exported"
        )
    check_header(header, run_dir / HEADER)
    for sample in samples:
        check_sample(sample, run_dir / SAMPLES)
    return header, samples


HEADER_OBJECTS = ("config", "scenario", "backend", "versions")  # header fields steerlab writes as JSON objects


def check_header(header: dict[str, Any], path: Path) -> None:
    """One line for a header whose fields the log is built from are not what steerlab writes."""
    for key in HEADER_OBJECTS:
        if header.get(key) is not None and not isinstance(header[key], dict):
            raise ConfigError(f"{path}: {key} is a JSON {_kind(header[key])}, not an object; it was not written by "
                              "steerlab's run engine, so the run cannot be exported")  # fmt: skip
    if not isinstance(header.get("n_rows"), int | None) or isinstance(header.get("n_rows"), bool):
        raise ConfigError(f"{path}: n_rows is a JSON {_kind(header['n_rows'])}, not a number of rows")
    found = _lone_surrogate(header)
    if found is not None:
        raise ConfigError(f"{path}: {found} holds a lone surrogate (not Unicode text); it was not written by "
                          "steerlab, so the run cannot be exported")  # fmt: skip


def check_sample(sample: dict[str, Any], path: Path) -> None:
    """One line for a sample whose fields the log is built from are not what steerlab's run engine writes."""
    sid = sample["id"]

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{path}: sample {sid!r} {what}; it was not written by steerlab's run engine, so the run "
                           "cannot be exported")  # fmt: skip

    if not isinstance(sample.get("item"), str) or not sample["item"]:
        # the request is the unit of every statistic (steerlab.stats.request_of); inspect's stderr is clustered
        # by it, and one sample without it would silently turn clustering off for the whole log
        raise refuse("has no request id ('item')")
    turns = sample["turns"]
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("text"), str) for t in turns):
        raise refuse("has a turn without text (each turn is an object whose text is a string)")
    messages = sample.get("messages") or []
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content") or "", str) for m in messages
    ):
        raise refuse("has messages that are not objects with string content")
    judge = sample.get("judge")
    if judge is not None:
        if not isinstance(judge, dict) or not isinstance(judge.get("scores") or {}, dict):
            raise refuse("has a judge record that is not an object with an object of scores")
        for key, given in (judge.get("scores") or {}).items():
            if given is not None and not (isinstance(given, dict) and _number(given.get("score"))):
                raise refuse(f"has judge score {key!r} = {_short(given)}, not an object with a numeric score")
    found = _lone_surrogate(sample)
    if found is not None:
        raise refuse(f"holds a lone surrogate in {found} (not Unicode text: inspect would store it altered)")


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where in ``value`` a string holds a lone surrogate (a JSON \\udXXX escape that is not half of a pair: not
    Unicode text; inspect's writer would store it as those six characters instead), e.g. ``turns[0].text ('\\ud83d')``,
    or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{where or 'a string'} ({ascii(value[exc.start])})"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _lone_surrogate(key) is not None:
            return f"{where}.{ascii(key)}" if where else ascii(key)
        found = _lone_surrogate(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def export_inspect(run_dir: Path, out: Path, overwrite: bool = False, scorer: str | None = None) -> Exported:
    """Write the run in ``run_dir`` as an inspect_ai log at ``out`` (``.eval`` or ``.json``).

    ``scorer``: a regex or ``module:function(text, sample) -> float`` named by the user (the command line's
    ``--scorer``), scored on every sample; it replaces the scorer the run's own files name (see :class:`Scoring`).
    """
    require_inspect()
    fmt = check_out(out, overwrite, run_dir)
    log = build_log(run_dir, scorer)
    from inspect_ai.log import write_eval_log

    out = Path(out)
    try:
        with atomic_path(out) as tmp:  # the temporary file goes whatever happens; out appears only whole
            write_eval_log(log, str(tmp), format=fmt)  # type: ignore[arg-type]
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise ConfigError(f"cannot write --out {out} ({exc.strerror or exc}); nothing was written") from None
    metrics = {
        f"{score.name}/{name}": metric.value
        for score in (log.results.scores if log.results else [])
        for name, metric in score.metrics.items()
        if "/" not in name and name in ("accuracy", "mean", "stderr")
    }
    listed = fmt == "eval" or LISTED_JSON.match(out.name) is not None
    n_cells = len({(s.metadata or {}).get("cell") for s in log.samples or []})
    return Exported(out, len(log.samples or []), [s.name for s in log.eval.scorers or []], metrics, listed, n_cells)


def build_log(run_dir: Path, scorer: str | None = None) -> EvalLog:
    """The run as an inspect_ai :class:`EvalLog` (reads the run only; see the module docstring)."""
    from pydantic import ValidationError

    try:
        return _build_log(Path(run_dir), scorer)
    except ValidationError as exc:  # a field of the run that inspect's types refuse (a hand-edited run)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "a field"
        raise ConfigError(
            f"{run_dir}: {where}: {first.get('msg')} (inspect_ai's log format refuses it); the run was not written "
            "as steerlab's run engine writes runs, so it cannot be exported"
        ) from None


def _build_log(run_dir: Path, scorer: str | None) -> EvalLog:
    require_inspect()
    from inspect_ai import __version__ as inspect_version
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalPlan,
        EvalPlanStep,
        EvalRevision,
        EvalSpec,
        EvalStats,
        recompute_metrics,
    )

    run_dir = Path(run_dir)
    header, samples = read_run(run_dir)
    config = header.get("config") or {}
    judge_info = _read_json(run_dir / "judge.json")
    summary = _read_json(run_dir / SUMMARY)
    for name, side in ((SUMMARY, summary), ("judge.json", judge_info)):  # they travel in the log's metadata
        found = _lone_surrogate(side)
        if found is not None:
            raise ConfigError(f"{run_dir / name}: {found} holds a lone surrogate (not Unicode text); it was not "
                              "written by steerlab, so the run cannot be exported")  # fmt: skip
    scoring = Scoring.of(header, samples, summary, judge_info, scorer)
    model = model_name(header)
    generate = generate_config(config)
    log_samples = [eval_sample(s, model, scoring) for s in samples]
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()
    scenario = (header.get("scenario") or {}).get("name", "run")
    commit = header.get("git_commit")
    spec = EvalSpec(
        eval_id=digest[:22], run_id=digest[22:44], task_id=digest[44:64],
        created=_mtime(run_dir / HEADER), task=scenario, task_display_name=f"{scenario}: {run_dir.name}",
        task_args=config, tags=["steerlab", scenario],
        dataset=EvalDataset(name=Path(str(config.get("prompts", "requests"))).stem, location=config.get("prompts"),
                            samples=len(log_samples), sample_ids=[s.id for s in log_samples]),
        model=model, model_generate_config=generate, config=EvalConfig(limit=config.get("limit")),
        revision=EvalRevision(type="git", origin="", commit=commit.removesuffix("-dirty"),
                              dirty=commit.endswith("-dirty")) if commit else None,
        packages={**(header.get("versions") or {}), "inspect_ai": inspect_version},
        metadata={"steerlab": {
            "run_dir": str(run_dir.resolve()), "format": header.get("format"), "n_rows": header.get("n_rows"),
            "n_samples": len(samples), "exported_by": steerlab.__version__, "header": header,
            "judge": judge_info, "summary": summary,
        }},
        scorers=scoring.eval_scorers(),
    )  # fmt: skip
    steering = ("vectors", "controls", "multipliers", "layers", "scale", "operator", "clamp", "steer_if", "steer_only",
                "doses", "intervention", "lora")  # fmt: skip
    steer = {k: config[k] for k in steering if k in config}
    plan = EvalPlan(
        name="steerlab",
        steps=[
            EvalPlanStep(solver="steerlab/scenario", params=header.get("scenario") or {}),
            EvalPlanStep(solver="steerlab/steer", params=steer),
            EvalPlanStep(solver="steerlab/generate", params={"backend": header.get("backend")}),
        ],
        config=generate,
    )
    complete = header.get("n_rows") is None or len(samples) >= header["n_rows"]
    stats = EvalStats(started_at=_mtime(run_dir / HEADER), completed_at=_mtime(run_dir / SAMPLES))
    log = EvalLog(status="success" if complete else "cancelled", eval=spec, plan=plan, stats=stats,
                  samples=log_samples)  # fmt: skip
    if spec.scorers:
        recompute_metrics(log)  # inspect's own metric functions, over the scorers recorded in the spec
    return log


def model_name(header: dict[str, Any]) -> str:
    """inspect's ``provider/model``: the run's backend and its model as the run named it (``hf/smollm2``)."""
    backend = (header.get("backend") or {}).get("backend") or "steerlab"
    model = (header.get("config") or {}).get("model") or "unknown"
    return f"{backend if backend != 'undescribed' else 'steerlab'}/{model}"


def generate_config(config: dict[str, Any]) -> Any:
    from inspect_ai.model import GenerateConfig

    return GenerateConfig(max_tokens=config.get("max_new_tokens"), temperature=config.get("temperature"),
                          top_p=config.get("top_p"), seed=config.get("seed"),
                          stop_seqs=list(config.get("stop") or []) or None)  # fmt: skip


def cell_of(sample: dict[str, Any]) -> str:
    """The summary cell a sample belongs to: ``vector/arm|multiplier|[claim|]condition``."""
    mult = sample.get("multiplier")
    parts = [
        f"{sample.get('vector')}/{sample.get('arm')}",
        f"{mult:+g}" if isinstance(mult, int | float) else str(mult),
    ]
    if sample.get("claim") is not None:
        parts.append(str(sample["claim"]))
    return "|".join([*parts, str(sample.get("condition"))])


def chat_messages(sample: dict[str, Any], model: str) -> tuple[list[Any], list[Any]]:
    """(input, messages) of one sample (see the module docstring)."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    sid = sample["id"]
    sent = []
    for i, m in enumerate(sample.get("messages") or []):
        kind = kinds.get(m.get("role"))
        if kind is None:
            raise ConfigError(f"sample {sid!r} has a message with role {m.get('role')!r}; steerlab sends system, "
                              "user and assistant messages only")  # fmt: skip
        sent.append(kind(id=f"{sid}#m{i}", content=m.get("content") or "", source="input"))
    prefill = sample.get("prefill") or ""
    given = [ChatMessageAssistant(id=f"{sid}#prefill", content=prefill, source="input", metadata={"prefill": True})]
    conversation = list(sent)
    turns = sample["turns"]
    for t, turn in enumerate(turns):
        meta = {"turn": t, "finish_reason": turn.get("finish_reason"), "n_new_tokens": turn.get("n_new_tokens")}
        conversation.append(ChatMessageAssistant(id=f"{sid}#t{t}", content=turn.get("text") or "", source="generate",
                                                 model=model, metadata=meta))  # fmt: skip
        if t + 1 < len(turns):
            conversation.append(ChatMessageUser(id=f"{sid}#next{t}", content=NEXT, source="input"))
    return sent + (given if prefill else []), conversation


def eval_sample(sample: dict[str, Any], model: str, scoring: Scoring) -> EvalSample:
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ChatCompletionChoice, ModelOutput

    inputs, conversation = chat_messages(sample, model)
    last = sample["turns"][-1]
    output = ModelOutput(model=model, time=sample.get("seconds"), choices=[
        ChatCompletionChoice(message=conversation[-1], stop_reason=STOP.get(last.get("finish_reason"), "unknown"))
    ])  # fmt: skip
    metadata = {k: v for k, v in sample.items() if k not in MAPPED}
    judge = sample.get("judge")
    if isinstance(judge, dict):
        metadata["judge"] = {k: v for k, v in judge.items() if k != "scores"}
    metadata.update(cell=cell_of(sample), n_turns=len(sample["turns"]))
    return EvalSample(id=sample["id"], epoch=1, input=inputs, target="", messages=conversation, output=output,
                      scores=scoring.scores(sample) or None, metadata=metadata)  # fmt: skip


@dataclass
class Scoring:
    """Which scores a run's samples carry: compliance (labelled runs), judge concepts, a plain scorer."""

    labelled: bool
    concepts: dict[str, str]  # judge concept key -> its name (researcher_expectations, ...), in order
    plain: tuple[str, str, Any] | None  # (score name, scorer spec, f(text, sample)) for a plain run with a scorer
    clustered: bool  # stderr is clustered by request (every sample names its request: read_run checks it)
    judge_model: str | None = None

    @classmethod
    def of(cls, header: dict[str, Any], samples: list[dict[str, Any]], summary: dict[str, Any] | None,
           judge_info: dict[str, Any] | None, given: str | None = None) -> Scoring:  # fmt: skip
        """``given``: the scorer named on the command line (trusted: the user names the code); otherwise a
        plain run's scorer as its files name it, used only when it runs no code of the run's choosing
        (:func:`run_scorer`)."""
        labelled = all("label" in s for s in samples)
        keys: dict[str, None] = {}
        for s in samples:
            for key in (s.get("judge") or {}).get("scores") or {}:
                keys[key] = None
        names = (judge_info or {}).get("concepts") or {}
        concepts = {k: names.get(k, k) for k in sorted(keys)}
        plain = None
        from steerlab.runs.summary import scorer

        if given:
            fn = scorer(given)  # one line if it cannot be imported or compiled
            plain = (_score_name(given), given, fn)
        else:
            spec = (summary or {}).get("scorer") or (header.get("config") or {}).get("scorer")
            if not labelled and spec:
                fn = run_scorer(spec)
                plain = (_score_name(spec), spec, fn)
        return cls(labelled, concepts, plain, True, (judge_info or {}).get("model"))

    def _metrics(self, central: str) -> list[Any]:
        from inspect_ai.log._log import EvalMetricDefinition

        spread = EvalMetricDefinition(name="stderr", options={"cluster": "item"} if self.clustered else {})
        per_cell = {"metric": {"type": "metric", "name": central, "params": {}}, "group_key": "cell", "all": False}
        return [EvalMetricDefinition(name=central), spread, EvalMetricDefinition(name="grouped", options=per_cell)]

    def eval_scorers(self) -> list[Any] | None:
        from inspect_ai.log._log import EvalScorer

        out = []
        if self.labelled:
            out.append(EvalScorer(name="compliance", metrics=self._metrics("accuracy"),
                                  metadata={"steerlab": "1.0 when the label is compliant, else 0.0",
                                            "headline": POOLED}))  # fmt: skip
        for key, name in self.concepts.items():
            out.append(EvalScorer(name=f"judge_{key}", metrics=self._metrics("mean"),
                                  metadata={"concept": name, "judge_model": self.judge_model,
                                            "headline": POOLED}))  # fmt: skip
        if self.plain is not None:
            out.append(EvalScorer(name=self.plain[0], metrics=self._metrics("mean"), options={"spec": self.plain[1]},
                                  metadata={"headline": POOLED}))  # fmt: skip
        return out or None

    def scores(self, sample: dict[str, Any]) -> dict[str, Any]:
        from inspect_ai.scorer import Score

        out: dict[str, Score] = {}
        if self.labelled:
            label = sample["label"]
            out["compliance"] = Score(value=1.0 if label == "compliant" else 0.0, answer=label,
                                      explanation=EXPLAIN.get(label, label),
                                      metadata={"label": label, "output": sample.get("output"),
                                                "rejected_tag": sample.get("rejected_tag")})  # fmt: skip
        judge = sample.get("judge") or {}
        for key, name in self.concepts.items():
            given = (judge.get("scores") or {}).get(key)
            if given is not None:
                out[f"judge_{key}"] = Score(value=given["score"], explanation=given.get("justification"),
                                            metadata={"concept": name, "model": judge.get("model"),
                                                      "rubric": judge.get("rubric")})  # fmt: skip
            elif judge.get("error"):
                out[f"judge_{key}"] = Score.unscored(
                    reason="grader_failed", explanation=f"judge error: {judge['error']}"
                )
            else:
                why = judge.get("skipped") or "not judged"
                out[f"judge_{key}"] = Score.unscored(reason="not_judged", explanation=why)
        if self.plain is not None:
            name, spec, fn = self.plain
            out[name] = Score(value=_apply(spec, fn, sample), metadata={"scorer": spec})
        return out


POOLED = ("accuracy/mean and stderr pool every sample of the log: real and control arms, every multiplier, condition "
          "and claim together; the per-cell values are the grouped metrics, one per cell")  # fmt: skip


def _score_name(spec: str) -> str:
    return spec.split(":")[1] if re.fullmatch(r"[\w.]+:\w+", spec) else "regex"


def run_scorer(spec: str) -> Any:
    """The scorer a run's own files name, when it runs no code of the run's choosing: a regex, or a public function
    of :mod:`steerlab.scorers`. Any other ``module:function`` would be imported and run on every sample (and
    ``builtins:exec`` would run the model's output as Python), so it is refused unless named with ``--scorer``."""
    from steerlab.runs.summary import scorer

    if not isinstance(spec, str):
        raise ConfigError(f"the run's scorer is a JSON {_kind(spec)}, not a regex or module:function")
    if re.fullmatch(r"[\w.]+:\w+", spec):
        module, name = spec.split(":")
        scorers = importlib.import_module("steerlab.scorers")
        fn = getattr(scorers, name, None) if module == "steerlab.scorers" and not name.startswith("_") else None
        if not (pyinspect.isfunction(fn) and fn.__module__ == "steerlab.scorers"):
            raise ConfigError(
                f"the run names the scorer {spec!r}: code that export would import and run on every sample, so it "
                f"runs only when you name it: pass --scorer {spec} if you trust it (or --scorer with a regex or a "
                "steerlab.scorers function)"
            )
    return scorer(spec)


def _apply(spec: str, fn: Any, sample: dict[str, Any]) -> float:
    """The scorer's value on one sample; one line if it raises or gives something other than a number."""
    try:
        value = fn(sample.get("text", ""), sample)
    except Exception as exc:  # the scorer is the user's code: any failure is reported, not a traceback
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(
            f"scorer {spec!r} failed on sample {sample['id']!r} ({why[:200]}); nothing was written"
        ) from None
    if not _number(value) and not isinstance(value, bool):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ConfigError(f"scorer {spec!r} gave {shown} on sample {sample['id']!r}, not a number; "
                          "nothing was written")  # fmt: skip
    return float(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A run's JSON side file (summary.json, judge.json), or None when absent or unreadable (it only annotates)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> str:
    """When a file of the run was last written (UTC, ISO): the run's start (header) and end (samples)."""
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat()
