"""``steerlab pairs generate``: contrastive pairs written by a model (the paper, appendix D.1).

From a concept spec (:mod:`steerlab.pairgen_prompt`) each split's attempts ``0, 1, 2, ...`` are sent
to a generation backend; attempt ``k`` has a fixed prompt and the sampling seed
``derive_seed(run_seed, concept, split, k)``, so what it draws depends neither on the batch it went
out in nor on where an earlier run was stopped. Every reply is journalled in ``OUT.partial`` (an
append-only JSONL file whose first row is the run's identity) before it is used; the kept set is
then a pure function of the replies, replayed in attempt order: parse, read the fields, assemble
the pair, :func:`steerlab.pairs.pair_problems`, :func:`steerlab.audit.surface_marks`, duplicates.
A split stops at the pairs asked for or at its share of ``--max-attempts``. A killed run continues
with ``resume`` to the same file as an uninterrupted one. When every split is full the pair file
is written atomically and the journal removed; the yield report (``OUT`` with suffix
``.yield.json``) is written either way, and a run that falls short is a :class:`YieldError` of one
line that keeps the journal for ``--resume``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from steerlab.audit import audit_spans, shortcut_audit, without_keywords
from steerlab.backends.base import Request, Sampling, backend_identity, derive_seed
from steerlab.errors import ConfigError, SteerlabError
from steerlab.fileio import atomic_write_text, exclusive, open_append, read_jsonl
from steerlab.pairgen_prompt import (
    DECISIONS,
    PROMPT_VERSION,
    ConceptSpec,
    assemble,
    attempt_choice,
    load_spec,
    parse_reply,
    prompt_for,
    read_reply,
)
from steerlab.pairs import SPLITS, Pair, pair_problems, validate, write_pairs

ATTEMPTS_PER_PAIR = 4  # the default --max-attempts is this many replies per pair asked for
JOURNAL_FORMAT = 1


class YieldError(SteerlabError):
    """A run that ended short of the pairs asked for (``report``: its yield report)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class GenSettings:
    """How the pairs are generated: the model and backend, sampling, budget."""

    model: str = "smollm2"
    backend: str = "hf"
    lora: str | None = None
    run_seed: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    max_attempts: int | None = None  # None: ATTEMPTS_PER_PAIR x the pairs asked for
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    chat_date: str | None = None
    # sharding and engine options (steerlab.cli.options.engine_options): make_backend keywords
    engine: dict[str, Any] = field(default_factory=dict)

    def sampling(self, seed: int) -> Sampling:
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=seed)

    def identity(self, spec: ConceptSpec) -> dict[str, Any]:
        """What a resumed run must share with the run it continues (the counts and the budget may change:
        attempt k is the same question with the same seed whatever they are)."""
        return {
            "format": JOURNAL_FORMAT, "prompt_version": PROMPT_VERSION, "spec": spec.model_dump(exclude={"pairs"}),
            "model": self.model, "backend": self.backend, "lora": self.lora, "run_seed": self.run_seed,
            "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
        }  # fmt: skip


def journal_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".yield.json")


def budgets(asked: dict[str, int], max_attempts: int) -> dict[str, int]:
    """Each split's share of ``max_attempts``, in proportion to the pairs it asks for (largest remainders
    first, ties in split order), so the shares add up to ``max_attempts``."""
    total = sum(asked.values())
    exact = {s: max_attempts * n / total for s, n in asked.items()}
    share = {s: int(v) for s, v in exact.items()}
    for s in sorted(asked, key=lambda s: (-(exact[s] - share[s]), SPLITS.index(s)))[
        : max_attempts - sum(share.values())
    ]:
        share[s] += 1
    return share


@dataclass
class Plan:
    """A checked run: everything is validated, nothing is created yet."""

    spec: ConceptSpec
    spec_file: str
    out: Path
    settings: GenSettings
    asked: dict[str, int]
    budgets: dict[str, int]
    resume: bool
    overwrite: bool

    @property
    def max_attempts(self) -> int:
        return sum(self.budgets.values())


def _journal(plan: Plan) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, reply rows) of the journal when this run resumes it, else (None, [])."""
    path = journal_path(plan.out)
    if not (plan.resume and path.exists()):
        return None, []
    rows = read_jsonl(path, torn_tail=True)
    if not rows or rows[0].get("kind") != "header":
        raise ConfigError(f"{path} is not a pairs generate journal; remove it or pass --overwrite")
    header = rows[0]
    mine = plan.settings.identity(plan.spec)
    if header.get("identity") != mine:
        theirs = header.get("identity") or {}
        diff = [k for k in mine if theirs.get(k) != mine[k]] or ["format"]
        shown = [k if k == "spec" else f"{k} {theirs.get(k)!r} there, {mine[k]!r} here" for k in diff[:3]]
        raise ConfigError(
            f"{path} was written with other settings ({'; '.join(shown)}); rerun with the same spec and "
            "options, or pass --overwrite to start over"
        )
    return header, [r for r in rows[1:] if r.get("kind") == "reply"]


def prepare(
    spec_file: str, out: Path, settings: GenSettings, counts: dict[str, int | None] | None = None,
    resume: bool = False, overwrite: bool = False,
) -> Plan:  # fmt: skip
    """Check the spec, the options and the output before any model loads; creates nothing."""
    from steerlab.backends import BACKENDS

    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one")
    if settings.backend not in BACKENDS:
        raise ConfigError(f"--backend {settings.backend!r}: use {', '.join(BACKENDS)}")
    if settings.batch_size < 1:
        raise ConfigError(f"--batch-size {settings.batch_size}: give at least 1")
    settings.sampling(0).check()
    if settings.chat_date is not None:
        from steerlab.models import check_chat_date

        check_chat_date(settings.chat_date)
    spec = load_spec(spec_file, counts)
    asked = spec.pairs.asked()
    total = sum(asked.values())
    max_attempts = settings.max_attempts if settings.max_attempts is not None else ATTEMPTS_PER_PAIR * total
    if max_attempts < total:
        raise ConfigError(f"--max-attempts {max_attempts} is fewer than the {total} pairs asked for; raise it")
    partial = journal_path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name the pair file to write (e.g. {out}/pairs.jsonl)")
    if not (resume or overwrite):
        if out.exists():
            raise ConfigError(f"{out} exists; pass --overwrite to replace it, or name a new file")
        if partial.exists():
            raise ConfigError(f"{partial} holds an interrupted run; pass --resume to continue it or --overwrite")
    if resume and out.exists() and not partial.exists():
        raise ConfigError(f"{out} is complete (no {partial.name} to resume); pass --overwrite to generate it again")
    plan = Plan(spec, spec_file, out, settings, asked, budgets(asked, max_attempts), resume, overwrite)
    _journal(plan)  # a journal of another run is refused now, before the model loads
    return plan


def generate(plan: Plan, backend: Any = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ``plan`` and return its yield report; builds the backend from the plan's
    settings unless one is given. Raises :class:`YieldError` when a split ends short."""
    s = plan.settings
    if backend is None:
        from steerlab.backends import make_backend

        backend, _, _ = make_backend(
            s.backend, s.model, batch_size=s.batch_size, dtype=s.dtype, device=s.device,
            tensor_parallel_size=s.tensor_parallel_size, lora=s.lora, chat_date=s.chat_date, **s.engine,
        )  # fmt: skip
    out = plan.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "pair file"):
        header, rows = _journal(plan)  # read again under the lock
        described = backend_identity(backend.describe()) if hasattr(backend, "describe") else {}
        described = json.loads(json.dumps(described))  # as the journal holds it
        if header is not None and header.get("backend") != described:
            raise ConfigError(
                f"{journal_path(out)} was generated with another backend identity ({header.get('backend')}); "
                "resume it with the same backend, dtype and device, or pass --overwrite"
            )
        if header is None and journal_path(out).exists():  # --overwrite, or --resume of a journal-less run
            journal_path(out).unlink()
        _check_fits(plan, backend)
        with open_append(journal_path(out)) as journal:
            if header is None:
                head = {"kind": "header", "identity": s.identity(plan.spec), "backend": described}
                journal.write(json.dumps(head, ensure_ascii=False) + "\n")
                journal.flush()
            run = _Run(plan, backend, journal, {(r["split"], r["attempt"]): r for r in rows})
            run.all(progress)
        report = run.report()
        atomic_write_text(report_path(out), json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        if not report["complete"]:
            raise YieldError(shortfall(report, journal_path(out)), report)
        kept = run.final_pairs()
        config = plan.spec.validation_config()
        assert validate(kept, config).ok, "a kept pair fails validate"
        audit = shortcut_audit(kept, config.shortcut_audit, keywords=config.keywords)
        report["shortcut_audit"] = json.loads(json.dumps(audit.to_dict()))  # as the yield file holds it
        atomic_write_text(report_path(out), json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        if not audit.ok:  # every pair passed, but together their spans' surface tells the sides apart
            first = audit.flagged[0]
            raise YieldError(
                f"the {len(kept)} kept pairs fail the shortcut audit as a set: {first.label} AUROC "
                f"{first.auroc:.2f} > {first.max_auroc} ({first.top(3)}); nothing written, the replies stay in "
                f"{journal_path(out)}: list the marks under 'artefacts:' in the spec and rerun with --overwrite",
                report,
            )
        write_pairs(kept, out)
        journal_path(out).unlink()
    return report


def _check_fits(plan: Plan, backend: Any) -> None:
    """Refuse, before anything is generated, a prompt longer than the model's context."""
    fits = getattr(backend, "check_fits", None)
    if fits is None:
        return
    n = len(plan.spec.task_families) * len(DECISIONS)  # every (family, decision) prompt, see attempt_choice
    requests = [
        Request(prompt_for(plan.spec, split, k), plan.settings.sampling(0), id=f"{split}-{k}")
        for split in SPLITS
        if plan.asked[split]
        for k in range(min(n, plan.budgets[split]))
    ]
    fits(requests)


@dataclass
class _Split:
    asked: int
    budget: int
    replies: int = 0
    parsed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # the first filter each rejected reply failed
    checks: Counter[str] = field(default_factory=Counter)  # every check that fired, kept pairs' none
    kept: list[Pair] = field(default_factory=list)


class _Run:
    """The attempt loop: generate what the journal lacks, replay every reply in attempt order."""

    def __init__(self, plan: Plan, backend: Any, journal: Any, replies: dict[tuple[str, int], dict[str, Any]]):
        self.plan, self.spec, self.backend, self.journal, self.replies = plan, plan.spec, backend, journal, replies
        self.config = plan.spec.validation_config()
        self.splits = {split: _Split(plan.asked[split], plan.budgets[split]) for split in SPLITS}
        self.seen_tasks: set[tuple[str, str]] = set()
        self.seen_spans: set[tuple[str, str]] = set()

    def seed(self, split: str, attempt: int) -> int:
        return derive_seed(self.plan.settings.run_seed, self.spec.concept, split, attempt)

    def all(self, progress: bool) -> None:
        bar = tqdm(total=sum(self.plan.asked.values()), unit="pair", desc=f"pairs {self.spec.concept}",
                   disable=None if progress else True)  # fmt: skip
        try:
            for split, state in self.splits.items():
                attempt = 0
                while len(state.kept) < state.asked and attempt < state.budget:
                    if (split, attempt) not in self.replies:
                        self._ask(split, range(attempt, min(attempt + self.plan.settings.batch_size, state.budget)))
                    bar.update(self._use(split, state, attempt, self.replies[(split, attempt)]))
                    bar.set_postfix(replies=sum(st.replies for st in self.splits.values()))
                    attempt += 1
        finally:
            bar.close()

    def _ask(self, split: str, attempts: range) -> None:
        todo = [k for k in attempts if (split, k) not in self.replies]
        requests = [Request(prompt_for(self.spec, split, k), self.plan.settings.sampling(self.seed(split, k)),
                            id=f"{split}-{k}") for k in todo]  # fmt: skip
        results = self.backend.generate(requests)
        for k, result in zip(todo, results, strict=True):
            row = {"kind": "reply", "split": split, "attempt": k, "seed": self.seed(split, k), "text": result.text,
                   "finish_reason": result.finish_reason, "n_new_tokens": result.n_new_tokens}  # fmt: skip
            self.journal.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.replies[(split, k)] = row
        self.journal.flush()

    def _use(self, split: str, state: _Split, attempt: int, row: dict[str, Any]) -> int:
        """Judge one reply; 1 if its pair is kept."""
        from steerlab.audit import surface_marks

        state.replies += 1
        value = parse_reply(row["text"])
        if value is None:
            state.rejected["not_json"] += 1
            return 0
        state.parsed += 1
        reply, _ = read_reply(value)
        if reply is None:
            state.rejected["schema"] += 1
            return 0
        family, _ = attempt_choice(self.spec, attempt)
        meta = {"source": "steerlab pairs generate", "model": self.plan.settings.model, "attempt": attempt,
                "seed": row["seed"], "family": family}  # fmt: skip
        pair = assemble(self.spec, split, reply, f"{self.spec.concept}-{split}-a{attempt}", meta)
        reasons = [p.check for p in pair_problems(pair, self.config)]
        marks = surface_marks(pair.span_positive, pair.span_negative, list(self.spec.artefacts),
                              self.spec.max_length_ratio)  # fmt: skip
        reasons += [f"surface:{m}" for m in marks]
        tasks = (_norm(reply.task), _norm(reply.answer))
        spans = (_norm(reply.positive_span), _norm(reply.negative_span))
        if not reasons and (tasks in self.seen_tasks or spans in self.seen_spans):
            reasons.append("duplicate")
        if reasons:
            state.rejected[reasons[0]] += 1
            state.checks.update(dict.fromkeys(reasons, 1))
            return 0
        self.seen_tasks.add(tasks)
        self.seen_spans.add(spans)
        state.kept.append(pair)
        return 1

    def final_pairs(self) -> list[Pair]:
        """Kept pairs in split order, numbered within their split."""
        return [
            pair.model_copy(update={"id": f"{self.spec.concept}-{split}-{i:04d}"})
            for split, state in self.splits.items()
            for i, pair in enumerate(state.kept)
        ]

    def report(self) -> dict[str, Any]:
        s, plan = self.plan.settings, self.plan
        masked = {"keyword_hard": list(self.spec.keywords)}  # as pairs validate's audit reads that split
        splits = {split: _split_report(state, masked.get(split, [])) for split, state in self.splits.items()}
        total = {key: sum(r[key] for r in splits.values()) for key in ("asked", "attempts_allowed", "replies",
                                                                      "parsed", "kept")}  # fmt: skip
        total["rejected"] = dict(sum((Counter(r["rejected"]) for r in splits.values()), Counter()).most_common())
        return {
            "concept": self.spec.concept, "spec": plan.spec_file, "out": str(plan.out),
            "complete": all(r["kept"] == r["asked"] for r in splits.values()),
            "model": s.model, "backend": s.backend, "lora": s.lora, "run_seed": s.run_seed,
            "sampling": {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens},
            "max_attempts": plan.max_attempts, "prompt_version": PROMPT_VERSION,
            "splits": splits, "total": total,
        }  # fmt: skip


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _split_report(state: _Split, keywords: list[str]) -> dict[str, Any]:
    report = {
        "asked": state.asked, "attempts_allowed": state.budget, "replies": state.replies, "parsed": state.parsed,
        "rejected": dict(state.rejected.most_common()), "checks": dict(state.checks.most_common()),
        "kept": len(state.kept), "shortcut_audit": None,
    }  # fmt: skip
    if state.kept:  # a report on the kept set; the per-pair surface filter is the filter
        # keyword_hard puts the controlled keywords on the negative side by design: the audit asks what else
        # tells the sides apart
        spans = [[without_keywords(p.span(side), keywords) for p in state.kept] for side in ("positive", "negative")]
        audit = audit_spans(spans[0], spans[1])
        features = [asdict(f) for f in [*audit.features[:5], *audit.word_features[:5]]]
        report["shortcut_audit"] = {"auroc": audit.auroc, "features": features}
    return report


def shortfall(report: dict[str, Any], journal: Path) -> str:
    """The one line of a run that ended short: its yield, and how to go on."""
    total = report["total"]
    short = [f"{split} {r['kept']}/{r['asked']}" for split, r in report["splits"].items() if r["kept"] < r["asked"]]
    why = ", ".join(f"{k} {v}" for k, v in total["rejected"].items()) or "no rejections"
    return (
        f"{report['concept']}: kept {total['kept']} of {total['asked']} asked after {total['replies']} replies "
        f"({why}; short: {', '.join(short)}); the partial file {journal} is kept: rerun with --resume and a larger "
        f"--max-attempts (now {report['max_attempts']}) to continue, or use a stronger model"
    )


def run_generate(
    spec_file: str, out: Path, settings: GenSettings, counts: dict[str, int | None] | None = None,
    resume: bool = False, overwrite: bool = False, backend: Any = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Check everything, then generate: what the CLI calls."""
    return generate(prepare(spec_file, out, settings, counts, resume, overwrite), backend, progress)
