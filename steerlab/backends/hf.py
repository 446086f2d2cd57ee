"""Batched generation with Hugging Face transformers, per-row steering and per-row seeds.

Requests are rendered with the chat template, sorted by prompt length and cut into batches
(so padding waste stays low), left-padded, and decoded with the KV cache. Each batch installs
one :class:`~steerlab.steer.Steerer` whose table holds every distinct steering setting of the
call; each row selects its own. Sampling draws from a ``torch.Generator`` per row seeded with
that request's seed, so a row's sample does not depend on what else is in its batch (up to the
last-bit numerical effects of padding). Results come back in request order.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from steerlab.backends.base import Request, Result, Sampling, check_requests, package_version, render_prompts
from steerlab.backends.hf_compiled import CompiledDecoder, cache_of, resolve_compile
from steerlab.chat import folds_system
from steerlab.errors import ConfigError
from steerlab.loci import Position
from steerlab.models import (
    DEFAULT_CHAT_DATE,
    LoadedModel,
    check_chat_date,
    context_length,
    template_system_prompt,
)
from steerlab.steer import Steerer, SteeringSetting, steerer_for
from steerlab.tags import first_stop

log = logging.getLogger(__name__)
_STOP_TAIL_TOKENS = 24  # tokens decoded to look for a stop string


def _named_params(model: Any) -> set[str]:
    """The keyword arguments ``model.forward`` names (a wrapper taking only ``**kwargs``, such as a peft
    model, is looked through to the model it wraps)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return set()
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    inner = getattr(model, "get_base_model", None)
    if not named & {"cache", "past_key_values"} and callable(inner) and inner() is not model:
        named |= _named_params(inner())
    return named


def forward_kwargs(model: Any) -> tuple[str, str | None]:
    """``(cache, keep)``: the names under which ``model``'s forward takes the KV cache and the number of
    positions to compute logits at (``None`` where it takes none: the prefill then computes them all).

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40);
    4.57 knows only ``past_key_values``. Only a name the forward declares counts: transformers models
    also take ``**kwargs``, which would swallow a name they do not know without a word (a cache passed
    under the wrong name is silently not used). A forward naming neither gets the installed
    transformers' own name."""
    named = _named_params(model)
    if "cache" in named:
        cache = "cache"
    elif "past_key_values" in named:
        cache = "past_key_values"
    else:
        cache = _library_cache_name()
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in named), None)
    return cache, keep


def _library_cache_name() -> str:
    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` ``[batch, width]`` (CPU) of ``seqs`` left-padded with ``pad``:
    every row ends at the last column, and positions count from each row's first real token."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        input_ids[b, width - len(s) :] = torch.tensor(list(s))
        mask[b, width - len(s) :] = 1
    return input_ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


class HFBackend:
    def __init__(
        self,
        loaded: LoadedModel,
        batch_size: int = 16,
        position: Position = "all",
        chat_date: str = DEFAULT_CHAT_DATE,
        compile: bool | None = None,
        compiler: Any = None,
    ):
        """``compile``: decode through a static KV cache and a compiled step (:mod:`.hf_compiled`); ``None``
        (default) turns it on for a model on a CUDA device that can take it, ``True`` refuses one that cannot.
        ``compiler``: the ``torch.compile`` backend (default inductor, CUDA graphs on a GPU)."""
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size}: give at least 1")
        self.loaded = loaded
        self.chat_date = check_chat_date(chat_date)
        self.batch_size = batch_size
        self.position = position
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if loaded.tokenizer.eos_token_id is not None:
            eos_ids.add(loaded.tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self._cache_kw, self._keep_kw = forward_kwargs(loaded.model)
        self._static: CompiledDecoder | None = None
        if resolve_compile(loaded, compile):
            self._static = CompiledDecoder(loaded, batch_size, position, self._cache_kw, self._keep_kw, compiler)

    @property
    def compiled(self) -> bool:
        """Whether decode steps run compiled (False from the moment compiling failed: decoding went on eagerly)."""
        return self._static is not None and self._static.failed is None

    def describe(self) -> dict[str, Any]:
        model = self.loaded.model
        device_map = getattr(model, "hf_device_map", None)
        return {
            "backend": "hf", "engine_version": package_version("transformers"), "torch": package_version("torch"),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.loaded.device), "device_type": self.loaded.device.type,
            "device_map": {str(k): str(v) for k, v in device_map.items()} if device_map else None,
            "tensor_parallel_size": 1, "chat_date": self.chat_date,
            "position": self.position,
            "template_system": template_system_prompt(self.loaded.tokenizer, self.loaded.chat_template, self.chat_date),
            "system_folded": folds_system(self.loaded.tokenizer, self.loaded.chat_template, self.chat_date),
            # The decode path is part of the identity (a resumed run keeps it): compiled bf16/fp16 steps round as
            # eager does (emulate_precision_casts), but their reductions may sum in another order.
            "engine": {"compiled": True} if self._static is not None else {},  # an eager run's identity as before
            "compiled": self.compiled,  # False from the moment compiling failed (decoding went on eagerly)
        }  # fmt: skip

    def check_fits(self, requests: Sequence[Request]) -> None:
        """Refuse, before a run starts, a prompt that leaves no room to generate in the model's context."""
        context = context_length(self.loaded)
        if context is None:
            return
        for r, seq in zip(requests, self.prompt_ids(requests), strict=True):
            if len(seq) >= context:
                raise ConfigError(
                    f"request {r.id!r} is {len(seq)} tokens, as long as the model's context of {context} or "
                    "longer; shorten it or drop it"
                )

    def prompt_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """Token ids of each request's rendered prompt (see :func:`steerlab.backends.base.render_prompts`)."""
        return self._prompts(requests)[0]

    def _prompts(self, requests: Sequence[Request]) -> tuple[list[list[int]], list[str]]:
        return render_prompts(self.loaded.tokenizer, self.loaded.chat_template, self.chat_date, requests)

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        check_requests(requests)
        settings: list[SteeringSetting] = []
        row_of: dict[int, int] = {}  # id(setting) -> table row
        for r in requests:
            if r.steering is not None and id(r.steering) not in row_of:
                settings.append(r.steering)
                row_of[id(r.steering)] = len(settings)
        rows = [row_of.get(id(r.steering), 0) for r in requests]
        labels = [f"request {r.id!r}: {r.steering.describe()}" if r.steering is not None else None for r in requests]
        ids, leads = self._prompts(requests)
        results: list[Result | None] = [None] * len(requests)
        # No row runs past the model's context: a prompt that fills it ends at once with finish reason
        # "length" (a later turn of a long transcript, say: the sample is then labelled truncated), and
        # every other row's budget stops at the context's end. The rest of the call goes on.
        context = context_length(self.loaded)
        samplings = [r.sampling for r in requests]
        if context is not None:
            for i, (r, seq) in enumerate(zip(requests, ids, strict=True)):
                room = context - len(seq)
                if room <= 0:
                    log.warning("request %r is %d tokens, the model's context is %d: nothing generated",
                                r.id, len(seq), context)  # fmt: skip
                    results[i] = Result(r.id, "", len(seq), 0, "length", 0.0, leads[i])
                elif room < r.sampling.max_new_tokens:
                    samplings[i] = replace(r.sampling, max_new_tokens=room)
        order = sorted((i for i in range(len(requests)) if results[i] is None), key=lambda i: len(ids[i]))
        steerer = self._steering(settings, order, ids, samplings, context)
        try:
            for lo in range(0, len(order), self.batch_size):
                batch = order[lo : lo + self.batch_size]
                if steerer is not None:
                    steerer.set_rows([rows[i] for i in batch])
                started = time.perf_counter()
                outs = self._decode(
                    [ids[i] for i in batch], [samplings[i] for i in batch],
                    [requests[i].context + leads[i] + requests[i].prefill for i in batch],
                    steerer, [labels[i] for i in batch],
                )  # fmt: skip
                seconds = (time.perf_counter() - started) / len(batch)
                decided = steerer.decisions() if steerer is not None else None  # conditions: (passed, score) per row
                for k, (i, (text, n_new, reason)) in enumerate(zip(batch, outs, strict=True)):
                    met, score = decided[k] if decided else (None, None)
                    results[i] = Result(requests[i].id, text, len(ids[i]), n_new, reason, seconds, leads[i], met, score)
        finally:
            if steerer is not None:
                steerer.remove()
                steerer.unwatch()  # an error between the checks left it armed (the static steerer outlives the call)
        return results  # type: ignore[return-value]

    def _steering(
        self, settings: list[SteeringSetting], order: list[int], ids: list[list[int]], samplings: list[Sampling],
        context: int | None,
    ) -> Steerer | None:  # fmt: skip
        """The installed steerer of a call (table row ``i + 1``: ``settings[i]``), or None; ``order`` lists the
        requests to decode, in decoding order."""
        static = self._static
        if static is not None and order:
            # One static cache for the whole call. Every row of a batch writes at (the batch's widest prompt + step),
            # for as many steps as the batch's largest budget: the cache must hold that, for the worst batch.
            batches = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
            static.prepare(
                max(max(len(ids[i]) for i in b) + max(samplings[i].max_new_tokens for i in b) for b in batches), context
            )
            static.load(settings)
            return static.steerer.install()
        if settings:
            return steerer_for(
                self.loaded.blocks, settings, self.loaded.d_model, position=self.position, max_batch=self.batch_size
            ).install()
        return None

    @torch.inference_mode()
    def _decode(
        self,
        seqs: list[list[int]],
        samplings: list[Sampling],
        heads: list[str],
        steerer: Steerer | None = None,
        labels: list[str | None] | None = None,
    ) -> list[tuple[str, int, str]]:
        """Decode a batch; ``heads[b]`` is the transcript before row b's new text (for stop rules).

        With a ``steerer``, the prefill pass and the first decode step are checked: a steered row
        (``labels[b]`` names its setting) whose hidden state at a steered layer, or whose logits,
        are no longer finite stops the call with one line naming the setting. That costs one
        reduction per steered layer and pass, on two passes per batch, and one sync each.
        """
        model, tok, device = self.loaded.model, self.loaded.tokenizer, self.loaded.device
        static = self._static
        real = len(seqs)
        pad = tok.pad_token_id
        input_ids, mask, positions = (t.to(device) for t in left_pad(seqs, pad))
        batch = real
        if static is not None and real < static.batch_size:
            # Decode steps keep the static batch shape: filler rows that are done from the start.
            fill, batch = static.batch_size - real, static.batch_size
            samplings = [*samplings, *[Sampling(max_new_tokens=1)] * fill]
            heads = [*heads, *[""] * fill]
            if labels is not None:
                labels = [*labels, *[None] * fill]
        generators = [torch.Generator(device=device).manual_seed(s.seed) for s in samplings]
        limit = max(s.max_new_tokens for s in samplings)
        rows = Transcripts(tok, self.eos_ids, samplings, heads, real)
        done = rows.done

        check = steerer is not None and labels is not None and any(label is not None for label in labels)
        if check:
            steerer.watch()
        # Logits at the last position only (every row ends there: left padding); the full
        # [batch, seq, vocab] is never made where the model can skip it (transformers CausalLMs can).
        keep = {self._keep_kw: 1} if self._keep_kw else {}
        if steerer is not None and steerer.gate is not None:  # conditional steering: decided on the prompt
            steerer.start_batch(mask)
            if steerer.gate.prepass:  # a condition read after a steered layer: an unsteered pass up to it first
                steerer.prepass(lambda: model(input_ids=input_ids, attention_mask=mask, position_ids=positions))
        if static is not None:  # prefill eagerly, into the static cache
            logits, positions = static.prefill(input_ids, mask, positions)
        else:
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
            logits = out.logits[:, -1, :].float()  # [batch, vocab]
        for step in range(limit):
            if check and step < 2:
                self._check_steered(
                    steerer, labels, logits, "the prefill pass" if step == 0 else "the first decode step"
                )
                if step == 0:
                    steerer.watch()
            nxt = self._pick(logits, samplings, generators)
            for b, token in enumerate(nxt.tolist()):  # one device sync per step, not one per row
                rows.push(b, token)
            if all(done):
                break
            feed = torch.where(torch.tensor(done, device=device), torch.full_like(nxt, pad), nxt)
            positions = positions[:, -1:] + 1
            if static is not None:  # the step after the prefill is checked (watched), so it runs eagerly
                logits = static.forward(feed[:, None], positions, eager=check and step == 0)
                continue
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(
                input_ids=feed[:, None], attention_mask=mask, position_ids=positions,
                use_cache=True, **{self._cache_kw: cache_of(out)},
            )  # fmt: skip
            logits = out.logits[:, -1, :].float()  # [batch, vocab]
        if check:
            steerer.unwatch()  # a batch that ended after its prefill pass leaves the watch armed
        return rows.results()

    @staticmethod
    def _check_steered(steerer: Steerer, labels: list[str | None], logits: torch.Tensor, where: str) -> None:
        """Raise if a steered row's hidden state (at a steered layer) or logits ``[batch, vocab]`` broke."""
        broken = {
            b: f"its hidden state at layer {layer} is non-finite or too large for float32 norms"
            for b, layer in reversed(steerer.watched())
        }
        for b in (~torch.isfinite(logits).all(-1)).nonzero().flatten().tolist():
            broken.setdefault(b, "its logits are non-finite")
        for b in sorted(broken):
            if labels[b] is not None:
                raise ConfigError(
                    f"{labels[b]}: after steering, {broken[b]} in {where}; generation stopped. "
                    "Use a smaller multiplier (or --dtype float32)"
                )

    @staticmethod
    def _pick(logits: torch.Tensor, samplings: list[Sampling], generators: list[torch.Generator]) -> torch.Tensor:
        """Next token per row ``[batch]``: greedy rows by argmax, sampled rows from their own generator."""
        picked = logits.argmax(-1)
        for b, s in enumerate(samplings):
            if s.temperature == 0:
                continue
            probs = torch.softmax(logits[b] / s.temperature, dim=-1)
            if s.top_p < 1:
                sorted_p, idx = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # smallest set reaching top_p
                probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
            picked[b] = torch.multinomial(probs, 1, generator=generators[b])[0]
        return picked


class Transcripts:
    """What each row of a batch has written, token by token, and where it ends: the end-of-sequence token (not
    kept), a stop string that counts (:func:`steerlab.tags.first_stop`, the text cut just after it) or its budget.

    ``heads[b]`` is the transcript before row b's new text (for stop rules); rows from ``real`` on are fillers,
    done from the start. Every local backend feeds its tokens through :meth:`push`, so they end rows alike."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], samplings: Sequence[Sampling], heads: Sequence[str],
                 real: int | None = None) -> None:  # fmt: skip
        n = len(samplings)
        real = n if real is None else real
        self.tokenizer, self.eos_ids, self.samplings, self.heads, self.real = tokenizer, eos_ids, samplings, heads, real
        self.new: list[list[int]] = [[] for _ in range(n)]
        self.reason = ["length"] * n
        self.done = [b >= real for b in range(n)]
        self.scanned = [0] * n  # characters of each row's text already searched for a stop that counts
        self.cut: list[int | None] = [None] * n  # where a row's text ends (just after its stop string)

    def push(self, b: int, token: int) -> None:
        """Row ``b`` wrote ``token`` (ignored once the row is done)."""
        if self.done[b]:
            return
        if token in self.eos_ids:
            self.done[b], self.reason[b] = True, "eos"
            return
        new, s = self.new[b], self.samplings[b]
        new.append(token)
        if s.stop and self._stop_in_tail(new, s.stop):
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            self.cut[b] = first_stop(text, s.stop, s.stop_rule, self.heads[b], start=self.scanned[b])
            self.scanned[b] = len(text)
            if self.cut[b] is not None:
                self.done[b], self.reason[b] = True, "stop"
                return
        if len(new) >= s.max_new_tokens:
            self.done[b] = True

    def results(self) -> list[tuple[str, int, str]]:
        """(text, new tokens, finish reason) of each real row."""
        out = []
        for b in range(self.real):
            text = self.tokenizer.decode(self.new[b], skip_special_tokens=True)
            out.append((text[: self.cut[b]] if self.reason[b] == "stop" else text, len(self.new[b]), self.reason[b]))
        return out

    def _stop_in_tail(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        """A cheap test before the exact one: does a stop string appear in the last few tokens?"""
        tail = self.tokenizer.decode(tokens[-_STOP_TAIL_TOKENS:], skip_special_tokens=True)
        return any(s in tail for s in stops)
