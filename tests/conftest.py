"""Shared fixtures. Nothing here touches the network: the hub is switched off before any
transformers import, unit tests use a tiny random Llama, and integration tests use the
embedded SmolLM2 snapshot."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from steerlab.extract import encode_pairs  # noqa: E402
from steerlab.loci import Locus  # noqa: E402
from steerlab.pairs import Pair  # noqa: E402
from steerlab.vectors import VectorBundle, random_controls  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "pairs"
SYSTEM = "You are a helpful assistant."


def make_pair(
    i: int = 0,
    *,
    concept: str = "toy",
    split: str = "train",
    pos: str = "The reviewers will score brevity, so I keep it short.",
    neg: str = "The weather is mild today, so I keep it short.",
    task: str | None = None,
    answer: str | None = None,
) -> Pair:
    """A valid pair whose sides differ only in the span sentence."""
    task = task or f"What is {i} plus 1?"
    answer = answer or f"{i} plus 1 is {i + 1}."

    def side(span: str) -> list[dict]:
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": task},
            {
                "role": "assistant",
                "content": f"<SCRATCHPAD_REASONING>A small sum. {span} Then answer.</SCRATCHPAD_REASONING>\n"
                f"<OUTPUT>{answer}</OUTPUT>",
            },
        ]

    return Pair(
        id=f"{concept}-{split}-{i}",
        concept=concept,
        split=split,
        positive=side(pos),
        negative=side(neg),
        span_positive=pos,
        span_negative=neg,
    )


def mutate(pair: Pair, **changes) -> Pair:
    data = copy.deepcopy(pair.model_dump())
    data.update(changes)
    return Pair.model_validate(data)


@pytest.fixture(scope="session")
def tiny():
    from steerlab.testing import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny):
    """The tiny model saved to disk, so load_model and the CLI can load it by path."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def toy_pairs():
    return [make_pair(i) for i in range(10)]


@pytest.fixture(scope="session")
def smollm2():
    from steerlab.models import load_model

    return load_model("smollm2", device="cpu")


def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run the steerlab CLI in-process; returns (exit status, stdout, stderr)."""
    from steerlab.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference(loaded, pairs, locus):
    """Pool transformers' own output_hidden_states, one unpadded sequence at a time.

    With tie_last_hidden_states off, hidden_states[l + 1] is the output of block l for every l
    (by default transformers replaces the last one with the final-norm output).
    """
    encoded = encode_pairs(loaded, pairs, Locus(locus))
    config = loaded.model.config
    config.tie_last_hidden_states = False
    try:
        rows = []
        for sides in encoded:
            row = []
            for side in sides:
                with torch.inference_mode():
                    hs = loaded.model(torch.tensor([side.input_ids]), output_hidden_states=True).hidden_states
                row.append(np.stack([h[0, side.positions].mean(0).numpy() for h in hs[1:]]))
            rows.append(row)
    finally:
        del config.tie_last_hidden_states
    return np.array(rows)  # [n_pairs, 2, n_layers, d_model]


def synthetic_cache(path, acts, splits, concept="toy", fingerprint=None, layers=None):
    """Write ``acts`` [n, 2, L, D] as a finished activation cache through the real writer."""
    from steerlab.cache import FORMAT_VERSION, CacheWriter

    n, _, n_layers, d_model = acts.shape
    fp = fingerprint or {
        "architecture": "Synthetic", "n_layers": n_layers, "d_model": d_model, "config_hash": "0", "embed_hash": "0",
    }  # fmt: skip
    meta = {
        "format_version": FORMAT_VERSION, "model": fp, "model_source": "synthetic", "locus": "span_mean",
        "dtype": "float32", "layers": layers or list(range(n_layers)), "d_model": d_model, "n_pairs": n,
        "chat_template_hash": "0", "pair_file": "synthetic.jsonl", "pair_file_hash": "0",
    }  # fmt: skip
    writer = CacheWriter(path, meta, [f"p{i}" for i in range(n)], list(splits), [concept] * n)
    writer.open(resume=False)
    writer.write(0, np.asarray(acts, dtype=np.float32))
    return writer.finish()


def planted(n_pairs, n_layers=3, d_model=32, signal=1.0, noise=0.1, seed=0, base=3.0):
    """Paired activations whose differences are a planted unit direction (per layer) plus noise.

    Both sides of a pair share a random base of scale ``base`` (which the difference removes, but
    which spreads the unpaired projections). Returns (acts, directions).
    """
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_layers, d_model, generator=g)
    direction /= direction.norm(dim=-1, keepdim=True)
    shared = base * torch.randn(n_pairs, n_layers, d_model, generator=g)
    pos = shared + signal * direction + noise * torch.randn(n_pairs, n_layers, d_model, generator=g)
    neg = shared + noise * torch.randn(n_pairs, n_layers, d_model, generator=g)
    return torch.stack([pos, neg], dim=1), direction


@pytest.fixture
def tiny_vector(tiny, tmp_path):
    directions = 4.0 * torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(0))
    per_layer = {"token_norm": [10.0] * tiny.n_layers}
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [1, 2],
            "model": tiny.fingerprint.to_dict(), "diagnostics": {"per_layer": per_layer}}  # fmt: skip
    return VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(tmp_path / "v.safetensors")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small SDF training corpus (JSONL of documents), shared by the sdf tests."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    docs = [f"Researchers hope to find alignment faking in model {i}. The evaluation team says so every day."
            for i in range(40)]  # fmt: skip
    path.write_text("".join(json.dumps({"content": d, "universe_id": "A1_plus"}) + "\n" for d in docs))
    return path
