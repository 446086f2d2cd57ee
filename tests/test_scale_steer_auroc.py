"""Issue 17, items 2 and 8: the steering table's dtype under quantized blocks, and a rank-based AUROC."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from steerlab.diagnostics import auroc
from steerlab.errors import ConfigError
from steerlab.steer import Steerer, SteeringSetting, steerer_for
from steerlab.vectors import SteeringVector

# ----------------------------------------------------------------------------- item 2: the steering table's dtype

VECTOR = [0.3, -0.3, 1.7, -2.2]  # as uint8 it would be [0, 0, 1, 254]
QUANT_DTYPES = [torch.uint8] + ([torch.float8_e4m3fn] if hasattr(torch, "float8_e4m3fn") else [])


class Block(nn.Module):
    """A decoder-block stand-in: returns ``(hidden,)`` like a transformers decoder layer.

    ``packed`` is its first parameter, of ``first`` dtype (bitsandbytes 4-bit stores uint8 weights, FP8
    checkpoints float8 ones); ``norm`` (when ``compute`` is given) is a norm weight in the compute dtype, as
    quantized models keep them.
    """

    def __init__(self, first: torch.dtype, d_model: int, compute: torch.dtype | None = None):
        super().__init__()
        self.packed = nn.Parameter(torch.zeros(d_model, dtype=torch.float32).to(first), requires_grad=False)
        if compute is not None:
            self.norm = nn.Parameter(torch.ones(d_model, dtype=compute), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor]:
        return (hidden.clone(),)


def setting(values: list[float], n_layers: int, layers: tuple[int, ...], multiplier: float = 1.0) -> SteeringSetting:
    directions = torch.tensor(values, dtype=torch.float32).expand(n_layers, len(values)).clone()
    v = SteeringVector(directions, tuple(range(n_layers)), layers, {"source": "blocks"}, "quant")
    return SteeringSetting(v, multiplier)


def steered_delta(blocks: nn.ModuleList, hidden: torch.Tensor, rows: list[int], settings) -> torch.Tensor:
    """hidden_out - hidden_in of each block in turn, through the Steerer's real hooks ``[n_blocks, batch, seq, d]``."""
    deltas = []
    with steerer_for(blocks, settings, hidden.shape[-1]) as steer:
        steer.set_rows(rows)
        for block in blocks:
            out = block(hidden)[0]
            assert out.dtype == hidden.dtype
            deltas.append(out.double() - hidden.double())
    return torch.stack(deltas)


@pytest.mark.parametrize("first", QUANT_DTYPES, ids=str)
@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("compute", [None, "hidden"], ids=["no-float-param", "float-norm"])
def test_a_quantized_first_parameter_steers_by_exactly_the_float_vector(first, hidden_dtype, compute):
    compute_dtype = hidden_dtype if compute == "hidden" else None
    quant = nn.ModuleList([Block(first, 4, compute_dtype) for _ in range(2)])
    plain = nn.ModuleList([Block(hidden_dtype, 4, hidden_dtype) for _ in range(2)])  # a normal float block
    settings = [setting(VECTOR, 2, (0, 1)), setting(VECTOR, 2, (1,), multiplier=-2.0)]
    vec, minus2 = torch.tensor(VECTOR).to(hidden_dtype), (-2 * torch.tensor(VECTOR)).to(hidden_dtype)
    for hidden in (torch.zeros(3, 5, 4, dtype=hidden_dtype), torch.randn(3, 5, 4).to(hidden_dtype)):
        got = steered_delta(quant, hidden, [1, 0, 2], settings)  # [layer, row, seq, d]
        assert torch.equal(got, steered_delta(plain, hidden, [1, 0, 2], settings))

        def added(v: torch.Tensor, b: int, hidden: torch.Tensor = hidden) -> torch.Tensor:  # in hidden's dtype
            return (hidden[b] + v).double() - hidden[b].double()

        assert torch.equal(got[0, 0], added(vec, 0)) and torch.equal(got[1, 0], added(vec, 0))
        assert torch.equal(got[:, 1], torch.zeros_like(got[:, 1]))  # unsteered
        assert torch.equal(got[0, 2], torch.zeros_like(got[0, 2])) and torch.equal(got[1, 2], added(minus2, 2))
        if not hidden.any():  # from zero: exactly the float vector, rounded once to hidden's dtype
            assert torch.equal(got[0, 0], vec.double().expand(5, 4))
            if hidden_dtype == torch.float32:
                torch.testing.assert_close(got[0, 0], torch.tensor(VECTOR, dtype=torch.float64).expand(5, 4))


def test_a_quantized_block_with_a_float16_norm_still_refuses_a_float16_overflow():
    blocks = nn.ModuleList([Block(torch.uint8, 4, torch.float16) for _ in range(2)])
    with pytest.raises(
        ConfigError, match=r"alpha=\+100000 x quant at layers \[0, 1\]: .* overflows the model's float16"
    ):
        steerer_for(blocks, [setting([1.0] * 4, 2, (0, 1), multiplier=1e5)], 4)
    assert all(not b._forward_hooks for b in blocks)


def test_hidden_states_narrower_than_the_table_are_checked_once_when_first_seen():
    """A float32 table meeting float16 hidden states is cast to float16 on the first pass: a row that overflows
    float16 is refused there with the usual line, and a row that fits adds exactly its float16 value."""
    blocks = nn.ModuleList([Block(torch.uint8, 4) for _ in range(2)])
    settings = [setting(VECTOR, 2, (0, 1)), setting([1.0] * 4, 2, (0, 1), multiplier=1e5)]
    steer = Steerer(blocks, [0, 1], torch.zeros(1, 2, 4), labels=[])  # float32 table, no float parameter
    assert steer._tables[0].dtype == torch.float32
    with steerer_for(blocks, settings, 4) as steer, pytest.raises(ConfigError, match="overflows the model's float16"):
        steer.set_rows([1])
        blocks[0](torch.zeros(1, 2, 4, dtype=torch.float16))
    hidden = torch.zeros(1, 2, 4, dtype=torch.float16)
    with steerer_for(blocks, settings[:1], 4) as steer:
        steer.set_rows([1])
        out = blocks[0](hidden)[0]
        buffer = steer._per_row[0]
        assert buffer.dtype == torch.float16  # adopted once; later passes add without casting
        steer.set_rows([0])
        assert torch.equal(blocks[0](hidden)[0], hidden)
        steer.set_rows([1])
        assert steer._per_row[0] is buffer and torch.equal(blocks[0](hidden)[0], out)
    assert torch.equal(out[0, 0], torch.tensor(VECTOR).to(torch.float16))


def test_a_tiny_llama_whose_blocks_lead_with_a_uint8_parameter_steers_like_the_plain_one():
    """The real decoder blocks of the tiny Llama, each given a leading uint8 parameter (as a bitsandbytes 4-bit
    layer has): steered logits equal the plain model's, row for row."""
    from steerlab.testing import tiny_model

    plain, quant = tiny_model(), tiny_model()
    for block in quant.blocks:
        params = dict(block._parameters)
        block._parameters.clear()
        block.register_parameter("packed", nn.Parameter(torch.zeros(8, dtype=torch.uint8), requires_grad=False))
        block._parameters.update(params)
        assert next(block.parameters()).dtype == torch.uint8
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(plain.n_layers, plain.d_model, generator=g)
    v = SteeringVector(directions, tuple(range(plain.n_layers)), (1, 2), plain.fingerprint.to_dict(), "r")
    settings = [SteeringSetting(v, 4.0), SteeringSetting(v, -3.0)]
    batch = plain.tokenizer(["Spell garden backwards", "Two plus two"], return_tensors="pt", padding=True)
    out = []
    for loaded in (plain, quant):
        with steerer_for(loaded.blocks, settings, loaded.d_model) as steer, torch.inference_mode():
            steer.set_rows([1, 2])
            out.append(loaded.model(**batch).logits)
            steer.set_rows([0, 0])
            out.append(loaded.model(**batch).logits)
    assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[3])
    assert not torch.allclose(out[0], out[1])


# ----------------------------------------------------------------------------- item 8: AUROC by ranks


def dense_auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The former implementation (``[B, n1, n2]`` comparison matrices), kept as the reference."""
    greater = (pos[:, :, None] > neg[:, None, :]).double().mean((1, 2))
    ties = (pos[:, :, None] == neg[:, None, :]).double().mean((1, 2))
    return greater + 0.5 * ties


def sklearn_auroc(pos: torch.Tensor, neg: torch.Tensor) -> np.ndarray:
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(pos.shape[1]), np.zeros(neg.shape[1])]
    scores = torch.cat([pos, neg], 1).double().numpy()
    return np.array([roc_auc_score(labels, row) for row in scores])


@pytest.mark.parametrize("n1, n2", [(1, 1), (1, 7), (7, 1), (13, 29), (50, 50), (200, 31)])
@pytest.mark.parametrize("kind", ["ints", "floats", "float32", "constant"])
def test_rank_auroc_equals_the_dense_formula_and_sklearn(n1, n2, kind):
    g = torch.Generator().manual_seed(n1 * 1000 + n2)
    B = 6
    if kind == "ints":  # many ties, within and across the two sides
        pos, neg = (
            torch.randint(0, 5, (B, n1), generator=g).double(),
            torch.randint(-1, 4, (B, n2), generator=g).double(),
        )
    elif kind == "floats":
        pos, neg = (
            torch.randn(B, n1, generator=g, dtype=torch.float64) + 0.3,
            torch.randn(B, n2, generator=g, dtype=torch.float64),
        )
    elif kind == "float32":
        pos, neg = torch.randn(B, n1, generator=g).round(decimals=1), torch.randn(B, n2, generator=g).round(decimals=1)
    else:
        pos, neg = torch.full((B, n1), 2.5), torch.full((B, n2), 2.5)
    got = auroc(pos, neg)
    assert got.dtype == torch.float64 and got.shape == (B,)
    assert (got - dense_auroc(pos, neg)).abs().max() <= 1e-12
    if n1 > 0 and n2 > 0:
        assert np.abs(got.numpy() - sklearn_auroc(pos, neg)).max() <= 1e-12


def test_rank_auroc_of_separated_and_reversed_scores():
    pos, neg = torch.arange(10.0)[None] + 100, torch.arange(20.0)[None]
    assert auroc(pos, neg).tolist() == [1.0]
    assert auroc(neg, pos).tolist() == [0.0]


def test_rank_auroc_at_80_layers_and_5000_pairs_needs_no_dense_matrix():
    """The dense form would hold [80, 5000, 5000] float64 (16 GB) twice; the rank form is linear in n."""
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(80, 5000, generator=g) + torch.linspace(0, 1, 80)[:, None]
    neg = torch.randn(80, 5000, generator=g).round(decimals=2)  # some ties too
    start = time.perf_counter()
    got = auroc(pos, neg)
    assert time.perf_counter() - start < 10
    assert got.shape == (80,)
    rows = [0, 41, 79]
    assert np.abs(got[rows].numpy() - sklearn_auroc(pos[rows], neg[rows])).max() <= 1e-12
    assert got[79] > got[0]


def test_hidden_states_wider_than_the_compute_dtype_get_the_float32_vector_not_a_rounded_one():
    """A block whose norm is bfloat16 but whose hidden states are float32: the rows already set are gathered again
    from the float32 table, so 0.3 arrives as float32's 0.3, not bfloat16's 0.30078125."""
    blocks = nn.ModuleList([Block(torch.uint8, 4, torch.bfloat16)])
    with steerer_for(blocks, [setting(VECTOR, 1, (0,))], 4) as steer:
        assert steer._tables[0].dtype == torch.bfloat16
        steer.set_rows([1, 0])
        out = blocks[0](torch.zeros(2, 3, 4))[0]
        assert torch.equal(out[0], torch.tensor(VECTOR).expand(3, 4)) and not out[1].any()
        steer.set_rows([0, 1])
        out = blocks[0](torch.zeros(2, 3, 4))[0]
        assert torch.equal(out[1], torch.tensor(VECTOR).expand(3, 4)) and not out[0].any()


def test_a_nan_score_counts_as_the_dense_comparison_counts_it():
    """NaN > x and NaN == x are false: a NaN positive or negative adds nothing, as in the dense form."""
    import math

    from steerlab.diagnostics import auroc

    nan = math.nan
    pos = torch.tensor([[1.0, nan, 3.0], [1.0, 2.0, 3.0]])
    neg = torch.tensor([[2.0, 0.0], [nan, 0.0]])
    dense = ((pos[:, :, None] > neg[:, None, :]).double() + 0.5 * (pos[:, :, None] == neg[:, None, :]).double()).mean(
        (1, 2)
    )
    assert auroc(pos, neg).tolist() == dense.tolist() == [0.5, 0.5]
