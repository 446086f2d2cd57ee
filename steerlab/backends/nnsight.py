"""Generation through nnsight: per-row steering as interventions, locally or on NDIF (``--backend nnsight``).

Everything around decoding is the HF backend's (:class:`steerlab.backends.hf.HFBackend`): prompts rendered and
tokenised the same way, sorted by length, cut into batches, left-padded; context limits; results in request order;
rows ended by :class:`steerlab.backends.hf.Transcripts` (end of sequence, stop strings with their rules, budgets).
What differs is how a batch is decoded: one nnsight ``generate`` trace per batch (transformers' own decoding
loop, greedy, with a clean generation config) whose body, at every step, adds to each selected block's output the
row's own steering vector, ``table[rows]`` ``[batch, d_model]`` per layer: a batched intervention, one per layer and
step, for all rows at once. benchmarks/bench_nnsight.py measures it against one invoke per row: on a CPU the two cost
the same (within noise of a plain forward); the batched form makes one intervention per layer instead of one per row
and layer, which is what a fast forward (a GPU; not measured) pays for, and one request body of fixed size for NDIF.
The same body runs here and on NDIF (``remote``), where it is the only way to steer: NDIF runs one request per
batch, with no state between requests, so decoding cannot be driven from here token by token.

Sampling. A sampled row draws its token in the trace body, at every step, from its own ``torch.Generator``
seeded with the request's seed, exactly as the HF backend does (softmax of the float32 logits over the
temperature, top-p, ``torch.multinomial``), then the step's logits are replaced by a one-hot choice so that the
greedy loop takes it. Locally the draws equal the HF backend's token for token. On NDIF they are reproducible for
a given request and seed, but whether they equal a local run's draws depends on the server's device (a CUDA
generator draws other numbers than a CPU one for the same seed), so remote samples match local ones only for
greedy decoding.

What it cannot do that the HF backend does: stop a row early. A row's tokens after its stop string, its end of
sequence or its budget are generated (the trace runs to the batch's largest budget, or until every row has ended
with an end-of-sequence token) and then dropped; the results are the same, the time is not. Steered hidden states
that turn non-finite in the prefill or the first decode step are reported as the HF backend reports them (one
line naming the setting), but after the batch, not during it. ``--position`` works as for the HF backend: the
prefill is step 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steerlab.backends.base import Sampling
from steerlab.backends.hf import HFBackend, Transcripts, left_pad
from steerlab.errors import ConfigError
from steerlab.loci import POSITIONS, Position
from steerlab.nnsight_model import NNsightModel
from steerlab.steer import SteeringSetting, build_table


class TraceSteering:
    """A call's steering table for trace bodies: the Steerer's ``set_rows`` protocol, no hooks."""

    def __init__(self, settings: Sequence[SteeringSetting], d_model: int, position: Position):
        table, layers = build_table(settings, d_model)  # [1 + n_settings, n_layers, d_model], row 0 zeros
        if not layers:
            raise ConfigError("no layer to steer: every setting has an empty layer list")
        bad = ~torch.isfinite(table).all(-1).all(-1)
        if bad.any():
            raise ConfigError(f"{settings[int(bad.nonzero()[0]) - 1].describe()}: the added vector is not finite")
        self.table, self.layers, self.position = table, layers, position
        self.labels = [s.describe() for s in settings]
        self.rows: list[int] = []

    def set_rows(self, rows: Sequence[int]) -> None:
        self.rows = list(rows)

    def per_row(self, n: int) -> torch.Tensor:
        """The vectors of the current rows, padded with unsteered rows to ``n``: ``[n, n_layers, d_model]``."""
        rows = torch.zeros(n, dtype=torch.long)
        rows[: len(self.rows)] = torch.as_tensor(self.rows, dtype=torch.long)
        return self.table[rows]

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
        self._blocks = _module_path(model.loaded.model, model.loaded.blocks)
        self._head = _module_path(model.loaded.model, model.loaded.model.get_output_embeddings())

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
        return TraceSteering(settings, self.loaded.d_model, self.position) if settings else None

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
        pad = tok.pad_token_id
        batch, width = len(seqs), max(len(s) for s in seqs)
        input_ids, mask, _ = left_pad(seqs, pad)
        device = self.nn.input_device
        input_ids, mask = input_ids.to(device), mask.to(device)
        limit = max(s.max_new_tokens for s in samplings)
        steps = self._trace(input_ids, mask, samplings, steerer, limit)
        generated, flags = steps
        if steerer is not None and labels is not None:
            self._report_broken(flags, labels, steerer)
        rows = Transcripts(tok, self.eos_ids, samplings, heads)
        new = generated[:, width:].tolist()  # [batch, <= limit]
        for b in range(batch):
            for token in new[b]:
                rows.push(b, token)
                if rows.done[b]:
                    break
        return rows.results()

    def _trace(
        self, input_ids: torch.Tensor, mask: torch.Tensor, samplings: list[Sampling], steerer: TraceSteering | None,
        limit: int,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """One ``generate`` trace over the batch: (prompt + generated ids ``[batch, width + n]``, per checked step
        and steered layer a ``[batch]`` flag of usable hidden states, then per checked step the logits' flags)."""
        from transformers import GenerationConfig

        envoy = self.nn.envoy
        blocks = envoy.get(self._blocks)
        head = envoy.get(self._head)
        batch = input_ids.shape[0]
        layers = steerer.layers if steerer is not None else []
        add = steerer.per_row(batch) if steerer is not None else None  # [batch, n_layers, d_model] float32
        position = self.position
        sampled = [b for b, s in enumerate(samplings) if s.temperature > 0]
        seeds = [s.seed for s in samplings]
        temperatures = [s.temperature for s in samplings]
        top_ps = [s.top_p for s in samplings]
        config = GenerationConfig(  # a clean config: none of the checkpoint's sampling defaults or logits processors
            max_new_tokens=limit,
            do_sample=False,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.loaded.tokenizer.pad_token_id,
        )

        def run(backend: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            with envoy.generate(inputs, generation_config=config, backend=backend) as tracer:
                flags = []
                generators = {}
                for step in tracer.iter[:limit]:
                    steer = add is not None and (position == "all" or (position == "prompt") == (step == 0))
                    for j in range(len(layers)):
                        out = blocks[layers[j]].output
                        hidden = out[0] if isinstance(out, tuple) else out  # [batch, seq, d_model]
                        if steer:
                            hidden[:] += add[:, j].to(device=hidden.device, dtype=hidden.dtype).unsqueeze(1)
                        if step < 2:  # the prefill and the first decode step are checked, as the HF backend does
                            flags.append(torch.isfinite(hidden[:, -1].float().pow(2).mean(-1)).cpu())
                    if sampled or step < 2:
                        logits = head.output  # [batch, seq, vocab]
                        last = logits[:, -1, :].float()  # [batch, vocab]
                        if step < 2:
                            flags.append(torch.isfinite(last).all(-1).cpu())
                        if sampled:
                            picked = last.argmax(-1)
                            for b in sampled:
                                if b not in generators:
                                    generators[b] = torch.Generator(device=last.device).manual_seed(seeds[b])
                                probs = torch.softmax(last[b] / temperatures[b], dim=-1)
                                if top_ps[b] < 1:
                                    sorted_p, idx = probs.sort(descending=True)
                                    keep = sorted_p.cumsum(0) - sorted_p < top_ps[b]
                                    probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
                                picked[b] = torch.multinomial(probs, 1, generator=generators[b])[0]
                            onehot = torch.full_like(last, float("-inf")).scatter(1, picked[:, None], 0.0)
                            logits[:, -1, :] = onehot.to(logits.dtype)
                flags = flags.save()
                generated = tracer.result.cpu().save()  # [batch, width + n]
            return generated, flags

        return self.nn.run("a generation batch", run)

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


def _module_path(model: torch.nn.Module, target: torch.nn.Module) -> str:
    for path, module in model.named_modules():
        if module is target:
            return path
    raise ConfigError(f"cannot find {type(target).__name__} in the model's module tree")


__all__ = ["NNsightBackend", "TraceSteering"]
