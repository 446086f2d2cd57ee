"""The two model passes of the side-effect report (:mod:`steerlab.analysis.side_effects`).

1. :class:`PerplexityProbe`, a :class:`~steerlab.analysis.doses.KLProbe` that also keeps, for every setting,
   the log-probability of each text's actual next token: from one pass over settings x texts through one per-row
   steering table, the per-token ``KL(unsteered || steered)`` (the formula KLProbe uses) and the
   per-token negative log-likelihood of the neutral texts under the steered model. Perplexity is
   ``exp(mean NLL)`` over every predicted token of every text (a token whose successor is a real token).
2. :func:`readouts`: every sample re-encoded by the *unsteered* model (teacher forcing, no steering hook), the
   residual stream (the output of decoder block ``l``, as :mod:`steerlab.extract` reads it) at each concept's
   read-out layer, projected on the concept's unit direction there, and averaged over the sample's generated
   tokens only. A sample of several turns is re-encoded once per turn, each time as the backend saw it at that
   turn (:func:`steerlab.analysis.heatmap.transcripts`), so each turn's generated tokens are read in the context
   they were generated in; the prompt, the prefill and the chat template's tokens are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from steerlab.analysis.doses import KLProbe
from steerlab.models import LoadedModel
from steerlab.steer import SteeringSetting, steerer_for


class PerplexityProbe(KLProbe):
    """KL and next-token NLL of the neutral texts under many steering settings at once."""

    def __init__(self, loaded: LoadedModel, texts: Sequence[str], max_tokens: int = 64, batch_size: int = 32):
        super().__init__(loaded, texts, max_tokens=max_tokens, batch_size=batch_size)
        # a position predicts the next one when both are real tokens (left padding: real tokens are contiguous)
        self.predicts = self.real[:, :-1] & self.real[:, 1:]  # [n_texts, width - 1]
        self.n_predicted = int(self.predicts.sum())
        self.targets = self.ids[:, 1:]  # [n_texts, width - 1]
        self.base_nll = self._nll(self.base, torch.arange(len(self.seqs)))  # [n_texts, width - 1]

    def _nll(self, logq: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """``-log q(next token)`` ``[len(texts), width - 1]`` (0 where nothing is predicted)."""
        target = self.targets[texts].to(logq.device)  # [batch, width - 1]
        nll = -logq[:, :-1].gather(-1, target[..., None])[..., 0]  # [batch, width - 1]
        return torch.where(self.predicts[texts].to(nll.device), nll, torch.zeros_like(nll)).cpu()

    @torch.inference_mode()
    def measure(self, settings: Sequence[SteeringSetting]) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL ``[len(settings), n_tokens]`` over every real token, NLL ``[len(settings), n_predicted]`` over every
        predicted token), text by text, left to right, through one per-row steering table.

        Each forward batch is one setting over the same chunk of texts the unsteered pass used, so a setting that adds
        nothing (multiplier 0) runs the very computation of the unsteered pass: its KL and NLL change are exactly 0,
        not a batch-shape rounding difference."""
        n_texts, width = self.ids.shape
        kl_out = torch.zeros(len(settings), n_texts, width)  # [settings, texts, width]
        nll_out = torch.zeros(len(settings), n_texts, width - 1)  # [settings, texts, width - 1]
        steerer = steerer_for(self.loaded.blocks, settings, self.loaded.d_model, position="all",
                              max_batch=min(self.batch_size, n_texts))  # fmt: skip
        with steerer:
            for s in range(len(settings)):
                for lo in range(0, n_texts, self.batch_size):  # the unsteered pass's chunks (KLProbe._unsteered)
                    texts = torch.arange(lo, min(lo + self.batch_size, n_texts))
                    steerer.set_rows([s + 1] * len(texts))  # table row of setting s: s + 1
                    logq = self._forward(texts.tolist())  # [batch, width, vocab]
                    logp = self.base[texts.to(self.base.device)]
                    p = logp.exp()
                    kl = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)  # [batch, width]
                    kl_out[s, texts] = kl.cpu()
                    nll_out[s, texts] = self._nll(logq, texts)
        return kl_out[:, self.real], nll_out[:, self.predicts]  # [settings, n_tokens], [settings, n_predicted]

    def base_perplexity(self) -> float:
        """Perplexity of the neutral texts under the unsteered model."""
        return math.exp(float(self.base_nll[self.predicts].double().mean()))


def perplexity(nll: torch.Tensor) -> list[float]:
    """Per row of ``nll`` ``[n, n_predicted]``: ``exp`` of its mean (inf where the mean overflows)."""
    means = nll.double().mean(-1).tolist()
    return [math.exp(m) if m < 700 else math.inf for m in means]


def turn_views(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample as it stood after each of its turns (its first ``t + 1`` turns), one view per turn."""
    turns = sample.get("turns") or [{"text": sample.get("text", "")}]
    return [{**sample, "turns": turns[: t + 1]} for t in range(len(turns))]


def readouts(
    loaded: LoadedModel,
    samples: Sequence[dict[str, Any]],
    units: torch.Tensor,
    layers: list[int],
    rows_layer: Sequence[int],
    chat_date: str,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample and concept, the mean projection of its generated tokens' residuals on the concept's unit
    direction: ``(values [n_samples, n_concepts], n_tokens [n_samples])``; NaN for a sample that generated no token.

    ``units`` ``[n_concepts, len(layers), d_model]`` holds unit directions; concept ``r`` is read at
    ``layers[rows_layer[r]]``. Unsteered: no steering hook is installed here.
    """
    from steerlab.analysis.heatmap import token_values, transcripts

    views, owner = [], []
    for i, s in enumerate(samples):
        for v in turn_views(s):
            views.append(v)
            owner.append(i)
    trans = transcripts(loaded, views, chat_date)
    values = token_values(loaded, [t.input_ids for t in trans], units, layers, projection=True,
                          batch_size=batch_size, progress=progress)  # fmt: skip
    n_concepts = units.shape[0]
    sums = np.zeros((len(samples), n_concepts))
    counts = np.zeros(len(samples), dtype=np.int64)
    pick = np.asarray(rows_layer)
    for i, t, v in zip(owner, trans, values, strict=True):
        generated = v[np.arange(n_concepts), pick, t.n_prompt :].astype(np.float64)  # [n_concepts, n_new]
        sums[i] += generated.sum(-1)
        counts[i] += generated.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], np.nan)
    return means, counts
