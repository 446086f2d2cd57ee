"""Generation through nnsight: per-row steering as interventions, locally or on NDIF (``--backend nnsight``).

Everything around decoding is the HF backend's (:class:`steerlab.backends.hf.HFBackend`): prompts rendered and
tokenised the same way, sorted by length, cut into batches, left-padded; context limits; results in request order;
rows ended by :class:`steerlab.backends.hf.Transcripts` (end of sequence, stop strings with their rules, budgets).
What differs is how a batch is decoded: one nnsight ``generate`` trace per batch (transformers' own decoding
loop, greedy) whose body, at every step, adds to each selected block's output the
row's own steering vector, ``table[rows]`` ``[batch, d_model]`` per layer: a batched intervention, one per layer and
step, for all rows at once. benchmarks/bench_nnsight.py measures it against one invoke per row: on a CPU the two cost
the same (within noise of a plain forward); the batched form makes one intervention per layer instead of one per row
and layer, which is what a fast forward (a GPU; not measured) pays for, and one request body of fixed size for NDIF.
The same body runs here and on NDIF (``remote``), where it is the only way to steer: NDIF runs one request per
batch, with no state between requests, so decoding cannot be driven from here token by token.

Choosing tokens. The trace body chooses every row's token itself at every step, as the HF backend does: the argmax
of the float32 logits, or, for a sampled row, a draw from its own ``torch.Generator`` seeded with the request's
seed (softmax over the temperature, top-p, ``torch.multinomial``); then it replaces the step's logits by a one-hot
choice, which transformers' greedy loop takes. So the checkpoint's generation settings (temperature, top-k/p, a
repetition penalty) change nothing; a hard constraint in its generation_config that could (suppressed tokens, bad
words, forced tokens) is caught: the token fed back at the next step must be the one chosen, else one line. The
chosen tokens, like everything the body keeps, are saved inside the step loop: when every row has ended before the
loop's last step, transformers stops and nnsight cuts the loop short, and nothing after the loop would run.
Locally the sampled draws equal the HF backend's token for token. On NDIF they are reproducible for a given request
and seed, but whether they equal a local run's draws depends on the server's device (a CUDA generator draws other
numbers than a CPU one for the same seed), so remote samples match local ones only for greedy decoding.

What it cannot do that the HF backend does: stop a row early. A row's tokens after its stop string, its end of
sequence or its budget are generated (the trace runs to the batch's largest budget, or until every row has ended
with an end-of-sequence token) and then dropped; the results are the same, the time is not. A steering vector
that overflows the model's dtype is refused before the batch, in the HF backend's line; steered hidden states that
turn non-finite in the prefill or the first decode step are reported as the HF backend reports them (one line
naming the setting), but after the batch, not during it. ``--position`` works as for the HF backend: the prefill
is step 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from steerlab.backends.base import Sampling
from steerlab.backends.hf import HFBackend, Transcripts, left_pad
from steerlab.conditions import ConditionGate, check_same_pass
from steerlab.errors import ConfigError
from steerlab.loci import POSITIONS, Position
from steerlab.nnsight_model import NNsightModel, module_path
from steerlab.steer import SteeringSetting, block_device_dtype, build_projection, build_table, check_finite_rows


class TraceSteering:
    """A call's steering table for trace bodies: the Steerer's ``set_rows`` protocol, no hooks. Holds the additions,
    the projection rows (ablate, clamp) and the conditions, as :class:`steerlab.steer.Steerer` does."""

    def __init__(self, settings: Sequence[SteeringSetting], d_model: int):
        table, layers = build_table(settings, d_model)  # [1 + n_settings, n_layers, d_model], row 0 zeros; finite
        if not layers:
            raise ConfigError("no layer to steer: every setting has an empty layer list")
        self.table, self.layers = table, layers
        self.projection = build_projection(settings, layers)  # units [rows, L, d], lo, hi [rows, L]; or None
        self.gate = ConditionGate.of(settings, d_model)
        if self.gate is not None and self.gate.prepass:
            check_same_pass(settings)
        self.labels = [s.describe() for s in settings]
        self.rows: list[int] = []
        self.decided: list[tuple[bool | None, float | None]] | None = None

    def set_rows(self, rows: Sequence[int]) -> None:
        self.rows = list(rows)
        self.decided = None

    def per_row(self) -> torch.Tensor:
        """The vectors of the current rows: ``[batch, n_layers, d_model]``."""
        return self.table[torch.as_tensor(self.rows, dtype=torch.long)]

    def per_row_projection(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The current rows' (units ``[batch, n_layers, d_model]``, lo, hi ``[batch, n_layers]``), or None."""
        if self.projection is None:
            return None
        index = torch.as_tensor(self.rows, dtype=torch.long)
        return tuple(part[index] for part in self.projection)  # type: ignore[return-value]

    def per_row_conditions(self) -> dict[int, tuple[torch.Tensor, ...]]:
        """Per condition layer, the current rows' (directions, thresholds, comparator ">", cosine, conditioned)."""
        if self.gate is None:
            return {}
        self.gate.rows = torch.as_tensor(self.rows, dtype=torch.long)
        return {layer: self.gate.per_row(layer) for layer in self.gate.layers}

    def decisions(self) -> list[tuple[bool | None, float | None]] | None:
        return self.decided

    def remove(self) -> None:
        pass

    def unwatch(self) -> None:
        pass


class NNsightBackend(HFBackend):
    def __init__(self, model: NNsightModel, batch_size: int = 16, position: Position = "all", **kwargs: Any):
        if position not in POSITIONS:
            raise ConfigError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
        super().__init__(model.loaded, batch_size=batch_size, position=position, compile=False, **kwargs)
        self.nn = model
        lm = model.loaded.model
        self._blocks = module_path(lm, model.loaded.blocks)
        self._head = module_path(lm, lm.get_output_embeddings())
        self._embed = module_path(lm, lm.get_input_embeddings())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        engine = self.nn.engine_meta()
        where = {"ndif_model": self.nn.model_id} if self.nn.remote else {}
        info.update(backend="nnsight", engine_version=engine["nnsight"], transformers=info.pop("engine_version"),
                    engine={"remote": self.nn.remote, **where})  # fmt: skip
        info.pop("compiled", None)
        if self.nn.remote:  # NDIF's copy: its device, dtype and placement are not known here
            info.update(device="ndif", device_type="ndif", dtype=None, device_map=None)
        return info

    def _steering(self, settings, order, ids, samplings, context):  # type: ignore[override]
        if not settings:
            return None
        steering = TraceSteering(settings, self.loaded.d_model)
        dtype = self._compute_dtype()
        for j, layer in enumerate(steering.layers):  # refused before the batch runs, as the HF backend's Steerer does
            check_finite_rows(steering.table[:, j].to(dtype), layer, steering.labels)
        return steering

    def _compute_dtype(self) -> torch.dtype:
        """The hidden states' dtype: the blocks' (a local model), or the config's (NDIF's copy; float32 unknown)."""
        if not self.nn.remote:
            return block_device_dtype(self.loaded.blocks[0])[1]
        config = self.loaded.model.config
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32

    @torch.inference_mode()
    def _decode(
        self,
        seqs: list[list[int]],
        samplings: list[Sampling],
        heads: list[str],
        steerer: TraceSteering | None = None,
        labels: list[str | None] | None = None,
    ) -> list[tuple[str, int, str]]:
        tok = self.loaded.tokenizer
        input_ids, mask, _ = left_pad(seqs, tok.pad_token_id)
        device = self.nn.input_device
        limit = max(s.max_new_tokens for s in samplings)
        picks, fed, flags = self._trace(input_ids.to(device), mask.to(device), samplings, steerer, limit)
        if steerer is not None and labels is not None:
            self._report_broken(flags, labels, steerer)
        chosen = torch.stack(picks, 1).tolist()  # [batch, steps run]: the token the trace chose at each step
        rows = Transcripts(tok, self.eos_ids, samplings, heads)
        for b in range(len(seqs)):
            for k, token in enumerate(chosen[b]):
                rows.push(b, token)
                if rows.done[b]:
                    break
                # transformers' loop must have fed back the token chosen (read at the next step's embedding input)
                if k < len(fed) and int(fed[k][b]) != token:
                    raise ConfigError(
                        f"transformers' generate did not take the token the nnsight backend chose for row {b} at step "
                        f"{k} ({int(fed[k][b])} instead of {token}): the checkpoint's generation_config constrains "
                        "decoding (suppress_tokens, bad_words_ids, forced tokens, ...); clear those fields in its "
                        "generation_config.json, or use --backend hf"
                    )
        return rows.results()

    def _trace(
        self, input_ids: torch.Tensor, mask: torch.Tensor, samplings: list[Sampling], steerer: TraceSteering | None,
        limit: int,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
        """One ``generate`` trace over the batch. Returns, per step that ran, the token chosen for every row
        ``[batch]``; per step after the first, the tokens transformers fed back ``[batch]``; and the checks: per checked
        step and steered layer a ``[batch]`` flag of usable hidden states, then the step's logits' flags.

        Every value is saved inside the step loop: a generation that ends before ``limit`` steps (every row at an end
        of sequence) cuts the loop short, and nothing after it would run. The trace chooses every row's token itself
        (argmax of the float32 logits, or the row's seeded draw) and writes a one-hot choice over the logits, so the
        checkpoint's own generation settings (temperature, top-k/p, repetition penalty) cannot change it; a hard
        constraint that could (suppressed tokens, say) is caught by comparing the tokens fed back."""
        from transformers import GenerationConfig

        envoy = self.nn.envoy
        blocks = envoy.get(self._blocks)
        head = envoy.get(self._head)
        embed = envoy.get(self._embed)
        layers = steerer.layers if steerer is not None else []
        add = steerer.per_row() if steerer is not None else None  # [batch, n_layers, d_model] float32
        projection = steerer.per_row_projection() if steerer is not None else None
        projects = [bool(projection[0][:, j].any()) if projection else False for j in range(len(layers))]
        conditions = steerer.per_row_conditions() if steerer is not None else {}
        # the blocks a step visits, in the model's order: a condition layer is read before it is steered
        visits = sorted([(c, -1) for c in conditions] + [(layer, j) for j, layer in enumerate(layers)])
        prompt_mask = mask.float()  # [batch, seq]
        position = self.position
        sampled = [b for b, s in enumerate(samplings) if s.temperature > 0]
        seeds = [s.seed for s in samplings]
        temperatures = [s.temperature for s in samplings]
        top_ps = [s.top_p for s in samplings]
        # Fields left None are filled from the checkpoint's generation_config: set the ones that add processors.
        config = GenerationConfig(
            max_new_tokens=limit, min_new_tokens=0, do_sample=False, repetition_penalty=1.0,
            no_repeat_ngram_size=0, eos_token_id=sorted(self.eos_ids), pad_token_id=self.loaded.tokenizer.pad_token_id,
        )  # fmt: skip

        def run(backend: Any) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            with warnings.catch_warnings():
                # a batch whose rows all end before `limit` cuts the loop short, by design (everything is saved in it)
                warnings.filterwarnings("ignore", message=".*was never reached.*")
                with envoy.generate(inputs, generation_config=config, backend=backend) as tracer:
                    picks, fed, flags, decided = [].save(), [].save(), [].save(), [].save()
                    generators = {}
                    gate = None  # [batch] float: 1 to steer the row, 0 where its condition failed
                    for step in tracer.iter[:limit]:
                        if step > 0:
                            fed.append(embed.input[:, -1].cpu())  # [batch]: the token fed back after the last step
                        steer = add is not None and (position == "all" or (position == "prompt") == (step == 0))
                        for layer, j in visits:
                            out = blocks[layer].output
                            hidden = out[0] if isinstance(out, tuple) else out  # [batch, seq, d_model]
                            if j < 0:  # a condition layer: decided on the prompt (step 0), before any steering
                                if step == 0:  # conditions.prompt_scores written out: a trace body uses only torch
                                    dirs, thr, gt, cos, here = (t.to(hidden.device) for t in conditions[layer])
                                    h = hidden.float()
                                    proj = torch.einsum("btd,bd->bt", h, dirs)  # [batch, seq]
                                    per = torch.where(cos[:, None], proj / h.norm(dim=-1).clamp_min(1e-30), proj)
                                    m = prompt_mask.to(h.device)
                                    per = torch.where(m > 0, per, torch.zeros_like(per))  # padding never enters
                                    score = per.sum(-1) / m.sum(-1).clamp_min(1.0)  # [batch]
                                    passed = torch.where(gt, score > thr, score < thr)
                                    met = torch.where(here, passed, torch.ones_like(passed))
                                    gate = met.float() if gate is None else gate * met.float()
                                    decided.append(torch.stack([here.float(), met.float(), score]).cpu())
                                continue
                            if steer:
                                delta = add[:, j].to(device=hidden.device, dtype=torch.float32)  # [batch, d_model]
                                if gate is not None:
                                    delta = delta * gate[:, None]
                                hidden[:] += delta.to(hidden.dtype).unsqueeze(1)
                                if projects[j]:  # ablate / clamp rows (the Steerer's formula, in float32)
                                    u = projection[0][:, j].to(hidden.device)  # [batch, d_model]
                                    if gate is not None:
                                        u = u * gate[:, None]
                                    lo = projection[1][:, j, None].to(hidden.device)
                                    hi = projection[2][:, j, None].to(hidden.device)
                                    q = torch.einsum("btd,bd->bt", hidden.float(), u)
                                    shift = torch.clamp(q, lo, hi) - q
                                    hidden[:] += (shift.unsqueeze(-1) * u.unsqueeze(1)).to(hidden.dtype)
                            if step < 2:  # the prefill and the first decode step are checked, as the HF backend does
                                flags.append(torch.isfinite(hidden[:, -1].float().pow(2).mean(-1)).cpu())
                        logits = head.output  # [batch, seq, vocab]
                        last = logits[:, -1, :].float()  # [batch, vocab]
                        if step < 2:
                            flags.append(torch.isfinite(last).all(-1).cpu())
                        picked = last.argmax(-1)  # [batch]
                        for b in sampled:
                            if b not in generators:
                                generators[b] = torch.Generator(device=last.device).manual_seed(seeds[b])
                            probs = torch.softmax(last[b] / temperatures[b], dim=-1)
                            if top_ps[b] < 1:
                                sorted_p, idx = probs.sort(descending=True)
                                keep = sorted_p.cumsum(0) - sorted_p < top_ps[b]
                                probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
                            picked[b] = torch.multinomial(probs, 1, generator=generators[b])[0]
                        picks.append(picked.cpu())
                        onehot = torch.full_like(last, float("-inf")).scatter(1, picked[:, None], 0.0)
                        logits[:, -1, :] = onehot.to(logits.dtype)
            return picks, fed, flags, decided

        picks, fed, flags, decided = self.nn.run("a generation batch", run)
        if steerer is not None and steerer.gate is not None:
            here, met, score = _combine(decided)
            steerer.decided = [
                (bool(m), float(s)) if h else (None, None) for h, m, s in zip(here, met, score, strict=True)
            ]
        return picks, fed, flags

    @staticmethod
    def _report_broken(flags: list[torch.Tensor], labels: list[str | None], steerer: TraceSteering) -> None:
        """Raise, naming the setting, for a steered row whose hidden state or logits broke in the checked steps."""
        per_step = len(steerer.layers) + 1
        for k, ok in enumerate(flags):
            step, j = divmod(k, per_step)
            where = "the prefill pass" if step == 0 else "the first decode step"
            for b in (~ok.bool()).nonzero().flatten().tolist():
                if b < len(labels) and labels[b] is not None:
                    what = "its logits are non-finite"
                    if j < len(steerer.layers):
                        layer = steerer.layers[j]
                        what = f"its hidden state at layer {layer} is non-finite or too large for float32 norms"
                    raise ConfigError(
                        f"{labels[b]}: after steering, {what} in {where}; generation stopped. "
                        "Use a smaller multiplier (or --dtype float32)"
                    )


def _combine(decided: list[torch.Tensor]) -> tuple[list[bool], list[bool], list[float]]:
    """Per row, from each condition layer's ``[3, batch]`` (conditioned here, passed, score): whether the row has a
    condition, whether it passed, and its score (a row has one condition, so one layer conditions it)."""
    stacked = torch.stack(decided)  # [n_condition_layers, 3, batch]
    here = stacked[:, 0].bool()
    met = stacked[:, 1].bool().all(0)
    score = torch.where(here, stacked[:, 2], torch.zeros_like(stacked[:, 2])).sum(0)
    return here.any(0).tolist(), met.tolist(), score.tolist()


__all__ = ["NNsightBackend", "TraceSteering"]
