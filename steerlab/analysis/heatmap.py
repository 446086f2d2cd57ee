"""Per-token activation cosines with steering vectors, over the transcripts of a finished run.

For each chosen sample the model is run again over the full transcript exactly as the backend saw it
at the sample's last turn: the chat rendered with the generation prompt (and the prefill on the first
turn) as :func:`steerlab.backends.base.render_prompts` renders it, then the text generated in that
turn, tokenised on its own (the backend fed the prompt's ids and decoded the new ones). Earlier turns
are part of the last turn's rendered chat.

The residual at layer ``l`` is the output of decoder block ``l`` (as in :mod:`steerlab.extract`).
Token ``i``'s value is computed from the activation at token ``i``'s own position: batches are
left-padded, with position ids counted from each row's first real token (as the HF backend decodes),
and each row's values are read from its last ``len(row)`` positions. ``tests/test_heatmap.py`` plants
a vector equal to one token's activation and checks that the cosine is 1 at that token only.

Values: cosine ``h·v / (|h| |v|)`` (default) or the projection ``h·v / |v|`` (activation units), for
every row (each vector, then its first N random controls) at every layer used; each row's average is
over its own vector's layers (its top-k layers by a validation diagnostic, or ``--layers``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlab.backends.hf import left_pad
from steerlab.errors import ConfigError
from steerlab.models import LoadedModel
from steerlab.vectors import VectorBundle

FORMAT = 1
RANKINGS = ("val_auroc", "keyword_hard_auroc", "cv_auroc", "cv_dprime")  # first present ranks the layers
MODES = ("cosine", "projection")


@dataclass
class Transcript:
    """One sample's full token sequence, as the model saw it at the sample's last turn."""

    id: str
    item: str
    condition: str
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]  # character range of each token in ``text``
    n_prompt: int  # tokens before the last turn's generated text


@dataclass
class SampleMap:
    """A sample's values: ``values`` ``[n_rows, n_layers, n_tokens]``, ``average`` ``[n_rows, n_tokens]``."""

    id: str
    item: str
    condition: str
    text: str
    token_ids: np.ndarray  # [n_tokens]
    tokens: list[str]  # pieces of ``text``; joined they give ``text`` back
    offsets: np.ndarray  # [n_tokens, 2]
    n_prompt: int
    values: np.ndarray
    average: np.ndarray


@dataclass
class Heatmaps:
    """Everything a heatmap needs to be drawn again without the model."""

    rows: list[dict[str, Any]]  # per row: name, vector, control (index or None), layers (averaged)
    vectors: list[dict[str, Any]]  # per vector file: name, file, layers, ranked_by
    layers: list[int]  # the layers of ``values``' second axis
    mode: str
    run_dir: str
    model: dict[str, Any]
    samples: list[SampleMap] = field(default_factory=list)


def select_samples(
    samples: Sequence[dict[str, Any]], ids: Sequence[str] | None, per_condition: int | None
) -> list[dict[str, Any]]:
    """The samples named by id (a row id, or an item: all its samples), else the first K per condition."""
    if ids is not None and per_condition is not None:
        raise ConfigError("give --samples or --per-condition, not both")
    if ids is not None:
        chosen: list[dict[str, Any]] = []
        for name in ids:
            found = [s for s in samples if s.get("id") == name] or [s for s in samples if s.get("item") == name]
            if not found:
                raise ConfigError(f"sample {name!r} is not in the run (give a row id or an item of samples.jsonl)")
            chosen += [s for s in found if s not in chosen]
        return chosen
    k = 1 if per_condition is None else per_condition
    if k < 1:
        raise ConfigError(f"--per-condition {k}: give at least 1")
    counts: dict[str, int] = {}
    chosen = []
    for s in samples:
        cond = str(s.get("condition"))
        if counts.get(cond, 0) < k:
            counts[cond] = counts.get(cond, 0) + 1
            chosen.append(s)
    return chosen


def top_layers(bundle: VectorBundle, k: int) -> tuple[list[int], str]:
    """The vector's ``k`` best layers by its first validation diagnostic present (ties: the lower layer),
    and the diagnostic's name; a file without diagnostics gives its selected layers."""
    diag = bundle.meta.get("diagnostics") or {}
    per_layer = diag.get("per_layer") or {}
    layers = list(diag.get("layers") or bundle.meta["layers"])
    for name in RANKINGS:
        scores = per_layer.get(name)
        if scores is not None and len(scores) == len(layers) and np.isfinite(np.asarray(scores, float)).all():
            order = sorted(range(len(layers)), key=lambda i: (-float(scores[i]), layers[i]))
            chosen = [layers[i] for i in order[:k] if layers[i] in bundle.vector.layers_available]
            if chosen:
                return sorted(chosen), name
    return sorted(bundle.vector.layers)[:k], "selected_layers"


def parse_layer_choice(spec: str, n_layers: int) -> int | list[int]:
    """``--layers``: ``topK`` (an int K) or a list like ``3,5,10-12`` (checked against the model)."""
    from steerlab.generate import parse_layers
    from steerlab.models import check_layers

    if spec.startswith("top"):
        try:
            k = int(spec[3:])
        except ValueError:
            raise ConfigError(f"--layers {spec!r}: write topK (e.g. top5) or a list like 3,5,10-12") from None
        if k < 1:
            raise ConfigError(f"--layers {spec!r}: K must be at least 1")
        return k
    return check_layers(parse_layers(spec, n_layers, "--layers"), n_layers)


def vector_rows(
    bundles: Sequence[tuple[Path, VectorBundle]], n_controls: int, choice: int | list[int] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int], torch.Tensor]:
    """(rows, vectors, layers, unit directions ``[n_rows, n_layers, d_model]``) for the vector files.

    ``choice``: each vector's K best layers (an int), the same layers for all (a list), or each vector's
    own selected layers (``None``)."""
    vectors, seen = [], set()
    for path, bundle in bundles:
        if n_controls > len(bundle.controls):
            raise ConfigError(f"--controls {n_controls}: {path} has only {len(bundle.controls)} random controls")
        if choice is None:
            layers, ranked_by = sorted(bundle.vector.layers), "selected_layers"
        elif isinstance(choice, int):
            layers, ranked_by = top_layers(bundle, choice)
        else:
            missing = [layer for layer in choice if layer not in bundle.vector.layers_available]
            if missing:
                raise ConfigError(f"--layers: {path} has no direction at layer(s) {missing}")
            layers, ranked_by = list(choice), "--layers"
        name = bundle.vector.name if bundle.vector.name not in seen else f"{bundle.vector.name}:{path.stem}"
        seen.add(name)
        vectors.append({"name": name, "file": str(path), "layers": layers, "ranked_by": ranked_by})
    used = sorted({layer for v in vectors for layer in v["layers"]})
    rows, units = [], []
    for v, (_, bundle) in zip(vectors, bundles, strict=True):
        for c, sv in [(None, bundle.vector), *enumerate(bundle.controls[:n_controls])]:
            have = [layer for layer in used if layer in sv.layers_available]
            rows.append({"name": v["name"] if c is None else f"{v['name']}/control{c}", "vector": v["name"],
                         "control": c, "layers": v["layers"]})  # fmt: skip
            d = torch.zeros(len(used), sv.d_model)  # [n_layers, d_model]; layers the file lacks stay 0
            for layer in have:
                d[used.index(layer)] = sv.at(layer).float()
            units.append(d / d.norm(dim=-1, keepdim=True).clamp_min(1e-30))
    return rows, vectors, used, torch.stack(units)  # [n_rows, n_layers, d_model]


def _turn_parts(sample: dict[str, Any]) -> tuple[list[dict[str, str]], str, str]:
    """(messages of the last turn's request, its prefill, the last turn's text as recorded)."""
    from steerlab.harness.scenario import next_turn_messages

    turns = sample.get("turns") or [{"text": sample.get("text", "")}]
    messages = list(sample["messages"])
    for turn in turns[:-1]:
        messages = next_turn_messages(messages, turn["text"])
    return messages, sample.get("prefill", "") if len(turns) == 1 else "", turns[-1]["text"]


def transcripts(loaded: LoadedModel, samples: Sequence[dict[str, Any]], chat_date: str) -> list[Transcript]:
    """Each sample's tokens at its last turn: the prompt as the backend rendered it, then the new text."""
    from steerlab.backends.base import Request, render_prompts
    from steerlab.chat import render_chat

    tok, template = loaded.tokenizer, loaded.chat_template
    parts = []
    for s in samples:
        if not isinstance(s.get("messages"), list):
            raise ConfigError(f"sample {s.get('id')!r} records no messages; it cannot be replayed")
        parts.append(_turn_parts(s))
    ids, leads = render_prompts(tok, template, chat_date, [Request(m, prefill=p) for m, p, _ in parts])
    out = []
    for s, (messages, prefill, text), prompt_ids, lead in zip(samples, parts, ids, leads, strict=True):
        head = lead + prefill
        if not text.startswith(head):
            raise ConfigError(f"sample {s.get('id')!r}: its last turn does not start with its prefill {head!r}")
        prompt = render_chat(tok, messages, template, add_generation_prompt=True, chat_date=chat_date) + prefill
        new = text[len(head) :]
        enc_p = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        enc_n = tok(new, add_special_tokens=False, return_offsets_mapping=True) if new else None
        if list(enc_p["input_ids"]) != list(prompt_ids):
            raise RuntimeError(f"sample {s.get('id')!r}: the prompt tokenises unlike the backend's")  # a bug
        offsets = [tuple(o) for o in enc_p["offset_mapping"]]
        new_ids = list(enc_n["input_ids"]) if enc_n else []
        offsets += [(a + len(prompt), b + len(prompt)) for a, b in (enc_n["offset_mapping"] if enc_n else [])]
        out.append(Transcript(str(s.get("id")), str(s.get("item")), str(s.get("condition")), prompt + new,
                              list(prompt_ids) + new_ids, offsets, len(prompt_ids)))  # fmt: skip
    return out


class _Stop(Exception):
    """Raised by the deepest hook: nothing after that block is needed."""


@torch.inference_mode()
def token_values(
    loaded: LoadedModel,
    seqs: Sequence[Sequence[int]],
    units: torch.Tensor,
    layers: list[int],
    projection: bool = False,
    batch_size: int = 4,
    progress: bool = True,
) -> list[np.ndarray]:
    """Per sequence, ``[n_rows, len(layers), len(seq)]`` float32: each token's cosine (or projection)
    with each row of ``units`` ``[n_rows, len(layers), d_model]`` (unit rows) at each layer, computed
    from the token's own position (left-padded batches, sorted by length)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give at least 1")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    results: list[np.ndarray | None] = [None] * len(seqs)
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    by_device: dict[torch.device, torch.Tensor] = {}
    bar = tqdm(total=len(seqs), unit="sample", desc="heatmap", disable=not progress)
    for lo in range(0, len(order), batch_size):
        batch = order[lo : lo + batch_size]
        ids, mask, positions = left_pad([seqs[i] for i in batch], pad)  # as the HF backend lays out its batches
        width = ids.shape[1]
        got: dict[int, torch.Tensor] = {}

        def make_hook(li: int, last: bool, got: dict[int, torch.Tensor] = got):
            def hook(_module: Any, _args: Any, output: Any) -> None:
                h = (output[0] if isinstance(output, tuple) else output).float()  # [batch, seq, d_model]
                u = by_device.get(h.device)
                if u is None:
                    u = by_device.setdefault(h.device, units.to(h.device))
                v = torch.einsum("bsd,rd->brs", h, u[:, li])  # [batch, n_rows, seq]
                if not projection:
                    v = v / torch.linalg.vector_norm(h, dim=-1).clamp_min(1e-30)[:, None, :]
                got[li] = v.cpu()
                if last:
                    raise _Stop

            return hook

        deepest = max(layers)
        handles = [loaded.blocks[layer].register_forward_hook(make_hook(li, layer == deepest))
                   for li, layer in enumerate(layers)]  # fmt: skip
        try:
            dev = loaded.device
            with contextlib.suppress(_Stop):
                loaded.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                             use_cache=False)  # fmt: skip
        finally:
            for handle in handles:
                handle.remove()
        stacked = torch.stack([got[li] for li in range(len(layers))], dim=2)  # [batch, n_rows, n_layers, seq]
        for b, i in enumerate(batch):
            results[i] = stacked[b, :, :, width - len(seqs[i]) :].numpy().astype(np.float32)
        bar.update(len(batch))
    bar.close()
    return results  # type: ignore[return-value]


def pieces(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """Each token's piece of ``text``, from its start to the next token's start (gaps go to the token
    before them, the text before the first token to the first), so the pieces join to ``text``."""
    starts = [0]
    for a, _ in offsets[1:]:
        starts.append(max(a, starts[-1]))
    ends = starts[1:] + [len(text)]
    return [text[a:b] for a, b in zip(starts, ends, strict=True)]


def compute(
    loaded: LoadedModel,
    run_dir: Path,
    header: dict[str, Any],
    samples: Sequence[dict[str, Any]],
    bundles: Sequence[tuple[Path, VectorBundle]],
    n_controls: int = 0,
    choice: int | list[int] = 5,
    projection: bool = False,
    batch_size: int = 4,
    progress: bool = True,
) -> Heatmaps:
    """The heatmaps of ``samples`` (records of ``run_dir``) for the vector files, on ``loaded``."""
    rows, vectors, layers, units = vector_rows(bundles, n_controls, choice)
    chat_date = header.get("chat_date") or (header.get("backend") or {}).get("chat_date")
    trans = transcripts(loaded, samples, chat_date) if chat_date else transcripts(loaded, samples, "2024-07-26")
    values = token_values(loaded, [t.input_ids for t in trans], units, layers, projection, batch_size, progress)
    maps = Heatmaps(rows, vectors, layers, MODES[projection], str(run_dir), loaded.fingerprint.to_dict())
    for t, v in zip(trans, values, strict=True):
        avg = np.stack([v[r, [layers.index(layer) for layer in row["layers"]]].mean(0) for r, row in enumerate(rows)])
        maps.samples.append(SampleMap(t.id, t.item, t.condition, t.text, np.asarray(t.input_ids, np.int64),
                                      pieces(t.text, t.offsets), np.asarray(t.offsets, np.int64).reshape(-1, 2),
                                      t.n_prompt, v, avg.astype(np.float32)))  # fmt: skip
    return maps


def write_h5(path: Path, maps: Heatmaps) -> None:
    """``heatmap.h5``, atomically: attributes at the root, one group per sample (``samples/NNNN``)."""
    import h5py

    from steerlab.fileio import atomic_path

    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["kind"] = "steerlab-heatmap"
        f.attrs["rows"] = json.dumps(maps.rows)
        f.attrs["vectors"] = json.dumps(maps.vectors)
        f.attrs["row_names"] = json.dumps([r["name"] for r in maps.rows])
        f.attrs["layers"] = np.asarray(maps.layers, np.int64)
        f.attrs["mode"] = maps.mode
        f.attrs["run_dir"] = maps.run_dir
        f.attrs["model"] = json.dumps(maps.model, sort_keys=True)
        group = f.create_group("samples")
        for n, s in enumerate(maps.samples):
            g = group.create_group(f"{n:04d}")
            for key in ("id", "item", "condition", "text", "n_prompt"):
                g.attrs[key] = getattr(s, key)
            g["token_ids"] = s.token_ids
            g["tokens"] = np.asarray(s.tokens, dtype=h5py.string_dtype())
            g["offsets"] = s.offsets
            g.create_dataset("values", data=s.values, compression="gzip")  # [n_rows, n_layers, n_tokens]
            g["average"] = s.average  # [n_rows, n_tokens]


def read_h5(path: Path) -> Heatmaps:
    """A ``heatmap.h5`` back as :class:`Heatmaps` (reads only)."""
    import h5py

    try:
        f = h5py.File(Path(path), "r")
    except OSError as exc:
        raise ConfigError(f"{path} is not an HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("kind") != "steerlab-heatmap":
            raise ConfigError(f"{path} is not a steerlab heatmap file")
        a = f.attrs
        maps = Heatmaps(json.loads(a["rows"]), json.loads(a["vectors"]), [int(x) for x in a["layers"]],
                        str(a["mode"]), str(a["run_dir"]), json.loads(a["model"]))  # fmt: skip
        for name in sorted(f["samples"]):
            g = f["samples"][name]
            maps.samples.append(SampleMap(
                str(g.attrs["id"]), str(g.attrs["item"]), str(g.attrs["condition"]), str(g.attrs["text"]),
                g["token_ids"][()], [t.decode() if isinstance(t, bytes) else t for t in g["tokens"][()]],
                g["offsets"][()], int(g.attrs["n_prompt"]), g["values"][()], g["average"][()],
            ))  # fmt: skip
    return maps


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite")
