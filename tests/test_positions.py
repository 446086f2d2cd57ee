"""Where steering writes, measured through generation on the HF backend."""

import torch

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector


def test_generation_position_leaves_the_first_generated_token_alone(tiny):
    """The first token comes from the prefill pass's logits, which ``generation`` does not steer;
    a vector large enough to change every later token must leave it as it is."""
    n, d = tiny.n_layers, tiny.d_model
    direction = torch.randn(n, d, generator=torch.Generator().manual_seed(3)) * 50
    vector = SteeringVector(direction, tuple(range(n)), tuple(range(n)), tiny.fingerprint.to_dict(), "big")
    setting = SteeringSetting(vector, 1.0)
    msgs = [{"role": "user", "content": "Name a colour."}]
    sampling = Sampling(max_new_tokens=6)
    ids = {}
    for position in ("generation", "all"):
        backend = HFBackend(tiny, position=position)
        plain, steered = backend.generate([Request(msgs, sampling), Request(msgs, sampling, setting)])
        ids[position] = [tiny.tokenizer(r.text, add_special_tokens=False)["input_ids"] for r in (plain, steered)]
    (plain, gen), (_, every) = ids["generation"], ids["all"]
    assert gen[0] == plain[0] and gen[1:] != plain[1:]
    assert every[0] != plain[0]  # steering the prompt does move the first token
