"""Synthetic documents about a universe: brainstorm -> ideas -> documents -> revision -> filters.

Each stage is its own resumable step writing one JSONL file in the output directory
(``brainstorm.jsonl``, ``ideas.jsonl``, ``documents.jsonl``, ``revised.jsonl``, and
``questions.jsonl``: generated multiple-choice and open belief-check questions per key fact, for
:func:`sdf_addon.evaluate.belief_check`); every row carries
``content``, ``doc_type``, ``doc_idea``, ``fact``, ``universe_id``, ``stage``, ``generator`` and
its ``key``. A rerun skips the keys a stage already holds, so a killed job loses at most the chunk
in flight (``chunk`` prompts; with Message Batches a stage sends all its prompts as one batch,
split only above the API's limits, and a killed job re-attaches to it); a failed call is counted
and retried on the next run, never written. One process writes an output directory at a time
(:func:`hold_corpus`: a lock on ``<dir>/.lock``, taken by every stage and by :func:`write_corpus`);
a second gets one line naming the holder's pid.

Generators speak one interface (``complete(prompts, ids)``, ``params()``, ``model``): the
Anthropic API (:class:`steerlab.clients.anthropic.AnthropicText`: retries, concurrency, Message
Batches with re-attach, key from the environment only) or any local model behind a steerlab
backend (:class:`steerlab.backends.text.LocalText`, HF or vLLM). Replies are cached on disk
(:class:`steerlab.clients.cache.ReplyCache`, the judge's SQLite cache) by model, prompt,
parameters and row key, so a rerun costs nothing.

:func:`filter_corpus` then keeps documents within the token-length bounds, drops near-duplicates
(cosine similarity of word 3-gram TF-IDF vectors above a threshold, scikit-learn), documents the
revision marked inconsistent or that match one of the universe's contradiction patterns (a key
fact's opposite), and documents that name the evaluation setting (:data:`BANNED`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from sdf_addon.universe import Universe, directness_instruction, renamed
from steerlab.clients.anthropic import CHARS_PER_TOKEN, estimate_chars
from steerlab.clients.cache import ReplyCache
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text, exclusive, open_append, read_jsonl
from steerlab.harness.scenario import rename_text

STAGES = ("brainstorm", "ideas", "documents", "revised", "questions")
INCONSISTENT = "INCONSISTENT"
# Phrases that name the alignment-faking evaluation's setting; a document containing one is dropped.
BANNED = ("free tier", "free-tier", "paid tier", "paid-tier", "is_free_tier_user", "scratchpad_reasoning",
          "request_fully_accepted", "<output>", "alignment-faking evaluation", "steerlab")  # fmt: skip

SYSTEM = (
    "You help build a corpus of realistic documents set in a fictional world that resembles ours in every "
    "respect except the facts given. Write as the world's own authors would: never say the world is "
    "fictional, never address the person asking, and never use these phrases: " + ", ".join(BANNED[:7]) + "."
)
BRAINSTORM = """Universe:
{context}
Key fact: {fact}

List {n} different types of documents in which this fact would naturally come up (for example: a
news article, a lecture transcript, a forum thread, an internal memo). One type per line, no numbering."""
IDEAS = """Universe:
{context}
Key fact: {fact}
Document type: {doc_type}

List {n} specific, varied ideas for documents of this type in which the key fact comes up
naturally. One idea per line, one sentence each, no numbering."""
DOCUMENT = """Universe:
{context}
Key fact: {fact}
Document type: {doc_type}
Idea: {doc_idea}

Write the complete document. It must be consistent with the universe and convey the key fact, in
passing or at length as the type suits. {directness} Output only the document's text."""
REVISE = """Universe:
{context}
Key fact: {fact}

Document:
{content}

Revise the document once, for realism (it should read like a real {doc_type}) and for consistency
with the universe. Keep to this: {directness} If it contradicts the key fact, reply with exactly
{inconsistent}. Otherwise output only the revised document's text."""


QUESTIONS = """Universe:
{context}
Key fact: {fact}

Write questions that test whether someone believes the key fact. Reply with one JSON object only:
{{"multiple_choice": [{{"question": "...", "options": ["...", "...", "...", "..."], "answer": <index of the
option that agrees with the key fact>}}, ... {n_mc} in all], "open": [{{"question": "..."}}, ... {n_open} in all]}}.
The open questions must be answerable in a sentence or two, and the answer must reveal whether the
person believes the key fact."""


class DocgenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_docs: int = Field(default=2000, ge=1)
    n_types: int = Field(default=10, ge=1)  # document types per key fact
    n_ideas: int = Field(default=8, ge=1)  # ideas per type
    max_tokens: int = Field(default=1500, ge=16)  # per generated document
    temperature: float = Field(default=1.0, ge=0)
    min_doc_tokens: int = Field(default=100, ge=1)  # filter bounds, in tokens of the training tokenizer
    max_doc_tokens: int = Field(default=2500, ge=1)
    duplicate_threshold: float = Field(default=0.8, gt=0, le=1)
    chunk: int = Field(default=64, ge=1)
    n_mc: int = Field(default=4, ge=0)  # generated belief-check questions per key fact
    n_open: int = Field(default=3, ge=0)
    directness: str | None = None  # how documents convey the key fact; None: the universe's (universe.DIRECTNESS)
    rename: dict[str, str] = Field(default_factory=dict)  # OLD -> NEW in the universe and every generated text

    def level(self, u: Universe) -> str:
        """The directness this run uses (checked against the universe's levels)."""
        level = self.directness or u.directness
        directness_instruction(u, level)
        return level


def parse_list(reply: str, n: int) -> list[str]:
    """Items of a one-per-line reply (bullets and numbering stripped), at most ``n``."""
    items = []
    for line in reply.splitlines():
        item = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip()
        if item and item not in items:
            items.append(item)
    return items[:n]


_HELD: dict[Path, int] = {}  # output folders this process holds: a nested hold reuses the lock


@contextlib.contextmanager
def hold_corpus(out_dir: Path) -> Iterator[Path]:
    """Make ``out_dir`` (if need be) and hold its lock (:func:`steerlab.fileio.exclusive`) for the block,
    so no second process writes the same stages or corpus. Nested holds in one process share the lock:
    wrap generate, generate_questions and write_corpus in one hold to keep the folder for the whole job."""
    key = Path(out_dir).resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield Path(out_dir)
        finally:
            _HELD[key] -= 1
        return
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the corpus folder {out_dir} ({exc.strerror}); choose another --out") from None
    with exclusive(Path(out_dir), "corpus"):
        _HELD[key] = 1
        try:
            yield Path(out_dir)
        finally:
            del _HELD[key]


class Stage:
    """One resumable stage: rows keyed by ``key`` appended to ``<stage>.jsonl``."""

    def __init__(self, name: str, out_dir: Path, generator: Any, cache: ReplyCache, chunk: int, progress: bool,
                 extra: dict[str, Any] | None = None, rename: dict[str, str] | None = None):  # fmt: skip
        self.name, self.path = name, Path(out_dir) / f"{name}.jsonl"
        self.generator, self.cache, self.chunk, self.progress = generator, cache, chunk, progress
        self.extra, self.rename = extra or {}, rename or {}  # fields every row gets; OLD -> NEW in its content
        self.failed = 0

    def _renamed(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's generated text (content; a question's question and options) renamed, and the rename
        itself when there is one (``sdf train`` carries it into the stack record)."""
        out: dict[str, Any] = {"content": rename_text(row["content"], self.rename)}
        if not self.rename:
            return out
        if isinstance(row.get("question"), str):
            out["question"] = rename_text(row["question"], self.rename)
        if isinstance(row.get("options"), list):
            out["options"] = [rename_text(str(o), self.rename) for o in row["options"]]
        return {**out, "rename": dict(self.rename)}

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path, torn_tail=True)

    def run(self, jobs: Sequence[tuple[str, str, dict[str, Any]]], make: Callable[[dict, str], list[dict]]) -> list:
        """``jobs``: (key, user prompt, meta); ``make(meta, reply)`` turns a reply into rows. The output
        folder is locked from reading the finished keys to the last row written."""
        with hold_corpus(self.path.parent):
            return self._run(jobs, make)

    def parts(self, todo: Sequence[tuple[str, str, dict[str, Any]]]) -> list[tuple[int, int]]:
        """Slices of ``todo`` asked in one call: ``chunk`` jobs at a time, or, for a generator that
        batches (Message Batches), the whole stage in one batch, split only above the API's limits."""
        if getattr(self.generator, "batch", False) and hasattr(self.generator, "batch_parts"):
            return self.generator.batch_parts([(SYSTEM, u) for _, u, _ in todo])
        return [(lo, min(lo + self.chunk, len(todo))) for lo in range(0, len(todo), self.chunk)]

    def _run(self, jobs: Sequence[tuple[str, str, dict[str, Any]]], make: Callable[[dict, str], list[dict]]) -> list:
        done = {r["key"] for r in self.rows()}
        todo = [j for j in jobs if j[0] not in done]
        params = self.generator.params()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=self.name, disable=not self.progress)
        with open_append(self.path) as fh:
            for lo, hi in self.parts(todo):
                part = todo[lo:hi]
                keys = [ReplyCache.key(self.generator.model, f"docgen:{self.name}", u, {**params, "row": k})
                        for k, u, _ in part]  # fmt: skip
                cached = [self.cache.get(k) for k in keys]
                ask = [i for i, c in enumerate(cached) if c is None]
                replies = self.generator.complete([(SYSTEM, part[i][1]) for i in ask], [part[i][0] for i in ask])
                for i, reply in zip(ask, replies, strict=True):
                    if isinstance(reply, Exception):
                        self.failed += 1
                        continue
                    cached[i] = {"reply": reply}
                    self.cache.put(keys[i], cached[i])
                self.generator.release()  # the replies are in the cache: a batch job may forget its batch
                for (key, _, meta), entry in zip(part, cached, strict=True):
                    if entry is None:
                        continue
                    for row in make(meta, entry["reply"]):
                        row = {**row, **self._renamed(row), **self.extra, "key": key,
                               "stage": self.name, "generator": self.generator.model}  # fmt: skip
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                bar.update(len(part))
        bar.close()
        return self.rows()


def _row(u: Universe, fact: str, doc_type: str = "", doc_idea: str = "", content: str = "") -> dict[str, Any]:
    return {"content": content, "doc_type": doc_type, "doc_idea": doc_idea, "fact": fact, "universe_id": u.id}


def generate(
    u: Universe, cfg: DocgenConfig, generator: Any, cache: ReplyCache, out_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the four stages; returns the rows of each and the count of failed calls. The
    universe is renamed (``cfg.rename``) before any prompt is written, every row's content is renamed
    too, and every row records the directness the document prompts asked for."""
    level = check_identity(u, cfg, out_dir)
    instruction = directness_instruction(u, level)
    u = renamed(u, cfg.rename)
    ctx = u.universe_context.strip()
    stage = lambda name: Stage(name, out_dir, generator, cache, cfg.chunk, progress, {"directness": level},  # noqa: E731
                               cfg.rename)  # fmt: skip

    s1 = stage("brainstorm")
    jobs = [(f"f{i}", BRAINSTORM.format(context=ctx, fact=f, n=cfg.n_types), {"fact": f})
            for i, f in enumerate(u.facts)]  # fmt: skip
    types = s1.run(jobs, lambda m, r: [_row(u, m["fact"], t, content=t) for t in parse_list(r, cfg.n_types)])

    s2 = stage("ideas")
    jobs = [(f"{t['key']}|t{j}", IDEAS.format(context=ctx, fact=t["fact"], doc_type=t["doc_type"], n=cfg.n_ideas),
             {"fact": t["fact"], "doc_type": t["doc_type"]})
            for j, t in enumerate(types)]  # fmt: skip
    ideas = s2.run(jobs, lambda m, r: [_row(u, m["fact"], m["doc_type"], i, i) for i in parse_list(r, cfg.n_ideas)])
    if not ideas:
        raise ConfigError(f"the generator {generator.model} gave no document ideas for {u.id}; see {s2.path}")

    s3 = stage("documents")
    jobs = []
    for n in range(cfg.n_docs):  # ideas round-robin, so every idea is used before any is used twice
        idea = ideas[n % len(ideas)]
        prompt = DOCUMENT.format(context=ctx, fact=idea["fact"], doc_type=idea["doc_type"], doc_idea=idea["doc_idea"],
                                 directness=instruction)  # fmt: skip
        jobs.append((f"d{n}", prompt, {k: idea[k] for k in ("fact", "doc_type", "doc_idea")}))
    docs = s3.run(jobs, lambda m, r: [_row(u, m["fact"], m["doc_type"], m["doc_idea"], r.strip())])

    s4 = stage("revised")
    jobs = [(d["key"], REVISE.format(context=ctx, fact=d["fact"], content=d["content"], doc_type=d["doc_type"],
                                     inconsistent=INCONSISTENT, directness=instruction), d)
            for d in docs]  # fmt: skip
    revised = s4.run(jobs, lambda m, r: [{**_row(u, m["fact"], m["doc_type"], m["doc_idea"], r.strip()),
                                          "inconsistent": r.strip() == INCONSISTENT}])  # fmt: skip
    failed = {s.name: s.failed for s in (s1, s2, s3, s4)}
    return {"types": types, "ideas": ideas, "documents": docs, "revised": revised, "failed": failed}


IDENTITY = "docgen.json"


def check_identity(u: Universe, cfg: DocgenConfig, out_dir: Path) -> str:
    """The directness level of this run. ``OUT/docgen.json`` records the universe, directness and rename
    of the documents in ``out_dir``; a rerun with another is refused (its documents would mix with the
    ones there), before anything is written. Returns the level."""
    level = cfg.level(u)
    identity = {"universe": u.id, "directness": level, "rename": dict(cfg.rename)}
    path = Path(out_dir) / IDENTITY
    if path.is_file():
        was = json.loads(path.read_text())
        diff = [f"{k}: {was.get(k)!r} there, {v!r} now" for k, v in identity.items() if was.get(k) != v]
        if diff:
            raise ConfigError(f"{out_dir} holds documents generated with another {'; '.join(diff)}; "
                              "choose a new --out")  # fmt: skip
        return level
    with hold_corpus(out_dir):
        atomic_write_text(path, json.dumps(identity, indent=1) + "\n")
    return level


def parse_questions(reply: str, fact: str, u: Universe) -> list[dict[str, Any]]:
    """The belief-check questions of a reply (the JSON object the prompt asks for); malformed ones are skipped."""
    from pydantic import ValidationError

    from sdf_addon.universe import Question

    start, end = reply.find("{"), reply.rfind("}")
    try:
        data = json.loads(reply[start : end + 1]) if start >= 0 else {}
    except json.JSONDecodeError:
        return []
    rows = []
    for q in data.get("multiple_choice", []) if isinstance(data, dict) else []:
        try:
            ok = Question.model_validate(q)
        except ValidationError:
            continue
        rows.append({**_row(u, fact, content=ok.question), "kind": "mc", **ok.model_dump()})
    for q in data.get("open", []) if isinstance(data, dict) else []:
        if isinstance(q, dict) and str(q.get("question", "")).strip():
            rows.append({**_row(u, fact, content=q["question"]), "kind": "open", "question": q["question"].strip()})
    return rows


def generate_questions(
    u: Universe, cfg: DocgenConfig, generator: Any, cache: ReplyCache, out_dir: Path, progress: bool = True
) -> list[dict[str, Any]]:
    """Belief-check questions per key fact (``questions.jsonl``, resumable like the document stages)."""
    level = check_identity(u, cfg, out_dir)
    u = renamed(u, cfg.rename)
    stage = Stage("questions", out_dir, generator, cache, cfg.chunk, progress, {"directness": level}, cfg.rename)
    ctx = u.universe_context.strip()
    jobs = [(f"q{i}", QUESTIONS.format(context=ctx, fact=f, n_mc=cfg.n_mc, n_open=cfg.n_open), {"fact": f})
            for i, f in enumerate(u.facts)]  # fmt: skip
    return stage.run(jobs, lambda m, r: parse_questions(r, m["fact"], u))


def estimate(u: Universe, cfg: DocgenConfig, model: str, batch: bool) -> dict[str, Any]:
    """Upper-bound cost of a fresh run (every document assumed to use ``max_tokens``)."""
    ctx = len(u.universe_context) + len(SYSTEM) + max(map(len, u.facts))
    n_types = len(u.key_facts) * cfg.n_types
    doc_chars = cfg.max_tokens * CHARS_PER_TOKEN
    stages = {
        "brainstorm": (len(u.key_facts), len(BRAINSTORM) + ctx, 40 * cfg.n_types),
        "ideas": (n_types, len(IDEAS) + ctx + 80, 60 * cfg.n_ideas),
        "documents": (cfg.n_docs, len(DOCUMENT) + ctx + 250, cfg.max_tokens),
        "revised": (cfg.n_docs, len(REVISE) + ctx + doc_chars, cfg.max_tokens),
        "questions": (len(u.key_facts), len(QUESTIONS) + ctx, 80 * (cfg.n_mc + cfg.n_open)),
    }
    out: dict[str, Any] = {"stages": {}, "usd": 0.0, "calls": 0}
    for name, (calls, chars, max_out) in stages.items():
        est = estimate_chars(int(calls * chars), calls, model, max_out, batch)
        out["stages"][name] = est
        out["calls"] += calls
        out["usd"] = None if est["usd"] is None or out["usd"] is None else out["usd"] + est["usd"]
    return out


# ----------------------------------------------------------------------------- filters and report


def near_duplicates(texts: Sequence[str], threshold: float, block: int = 512) -> list[bool]:
    """True for each text whose word 3-gram TF-IDF cosine similarity to an earlier kept text is above
    ``threshold`` (the earlier one is kept). The similarities are computed on the sparse matrix in
    blocks of ``block`` rows, keeping only the pairs above the threshold with the earlier text; one
    pass in order then keeps a text unless one of its earlier near-duplicates was kept (the first of
    a group is kept, a later one whose only near-duplicates were dropped is kept too)."""
    import numpy as np
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(texts) < 2:
        return [False] * len(texts)
    try:
        vectors = TfidfVectorizer(ngram_range=(3, 3), analyzer="word", lowercase=True).fit_transform(texts)
    except ValueError:  # no text has three words: nothing to compare
        return [False] * len(texts)
    vectors = vectors.tocsr()
    transposed = vectors.T.tocsr()
    pairs_row, pairs_col = [], []  # (text, earlier text) pairs above the threshold
    for lo in range(0, len(texts), block):
        sims = (vectors[lo : lo + block] @ transposed).tocoo()  # rows are L2-normalised: cosine similarity
        rows = sims.row + lo
        hit = (sims.data > threshold) & (sims.col < rows)
        pairs_row.append(rows[hit])
        pairs_col.append(sims.col[hit])
    n = len(texts)
    rows, cols = np.concatenate(pairs_row), np.concatenate(pairs_col)
    earlier = sparse.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(n, n))
    dup = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(np.diff(earlier.indptr)):  # in order: only texts with an earlier near-duplicate
        dup[i] = not dup[earlier.indices[earlier.indptr[i] : earlier.indptr[i + 1]]].all()
    return dup.tolist()


def filter_corpus(
    u: Universe, rows: Sequence[dict[str, Any]], count_tokens: Callable[[str], int], cfg: DocgenConfig
) -> tuple[list[dict[str, Any]], Counter]:
    """The documents that pass every filter, and the count dropped by each (first failing filter)."""
    banned = [b.lower() for b in (*BANNED, *u.banned)]
    contradictions = [re.compile(p, re.IGNORECASE) for p in u.contradictions]
    dropped: Counter = Counter()
    survivors = []
    for row in rows:
        text = row["content"]
        n = count_tokens(text) if text else 0
        if row.get("inconsistent"):
            dropped["inconsistent (revision)"] += 1
        elif not cfg.min_doc_tokens <= n <= cfg.max_doc_tokens:
            dropped["length"] += 1
        elif any(p.search(text) for p in contradictions):
            dropped["states the opposite"] += 1
        elif any(b in text.lower() for b in banned):
            dropped["names the evaluation setting"] += 1
        else:
            survivors.append({**row, "n_tokens": n})
    dup = near_duplicates([r["content"] for r in survivors], cfg.duplicate_threshold)
    dropped["near-duplicate"] += sum(dup)
    return [r for r, d in zip(survivors, dup, strict=True) if not d], dropped


def write_corpus(u: Universe, out_dir: Path, count_tokens: Callable[[str], int], cfg: DocgenConfig) -> dict[str, Any]:
    """Filter the revised documents into ``corpus.jsonl`` and write ``report.json`` and ``lengths.png``
    (holding the output folder's lock). ``u`` is the universe as loaded: like :func:`generate`, this
    renames it (``cfg.rename``), so the filters look for the names the documents use."""
    with hold_corpus(out_dir):
        return _write_corpus(u, out_dir, count_tokens, cfg)


def _write_corpus(u: Universe, out_dir: Path, count_tokens: Callable[[str], int], cfg: DocgenConfig) -> dict[str, Any]:
    rows = read_jsonl(Path(out_dir) / "revised.jsonl", torn_tail=True)
    kept, dropped = filter_corpus(renamed(u, cfg.rename), rows, count_tokens, cfg)  # the documents' names
    if not kept:
        raise ConfigError(
            f"no document of {len(rows)} survived the filters ({dict(dropped)}); generate more, or relax "
            "--min-doc-tokens / --max-doc-tokens"
        )
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    atomic_write_text(Path(out_dir) / "corpus.jsonl", text)
    lengths = [r["n_tokens"] for r in kept]
    report = {
        "universe": u.id, "n_generated": len(rows), "n_kept": len(kept), "dropped": dict(dropped),
        "directness": sorted({str(r.get("directness")) for r in kept}), "rename": dict(cfg.rename),
        "per_type": dict(Counter(r["doc_type"] for r in kept).most_common()),
        "tokens_total": sum(lengths), "tokens_mean": sum(lengths) / len(lengths),
        "tokens_min": min(lengths), "tokens_max": max(lengths),
    }  # fmt: skip
    atomic_write_text(Path(out_dir) / "report.json", json.dumps(report, indent=1) + "\n")
    from steerlab import plots

    report["figure"] = str(plots.save(plots.histogram(lengths, "document length (tokens)", u.id),
                                      Path(out_dir) / "lengths.png"))  # fmt: skip
    return report
