import json

import pytest
import torch

from steerlab.models import Fingerprint
from steerlab.vectors import SteeringVector, VectorBundle, VectorError, random_controls

FP = {"architecture": "Synthetic", "n_layers": 4, "d_model": 8, "config_hash": "abc", "embed_hash": "def"}


def bundle(n_controls=3):
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(4, 8, generator=g)
    meta = {"concept": "toy", "layers": [0, 1, 2, 3], "selected_layers": [1, 2], "model": FP,
            "controls": {"n": n_controls}, "nested": {"values": [0.1, 1e-12, 3]}}  # fmt: skip
    return VectorBundle.build(directions, random_controls(directions, n_controls, seed=5), meta)


def test_round_trip_keeps_every_byte(tmp_path):
    original = bundle()
    path = original.save(tmp_path / "v.safetensors")
    loaded = VectorBundle.load(path)
    assert torch.equal(loaded.vector.directions, original.vector.directions)
    assert all(torch.equal(a.directions, b.directions) for a, b in zip(loaded.controls, original.controls, strict=True))
    assert loaded.meta == original.meta
    assert loaded.vector.layers == (1, 2) and loaded.vector.layers_available == (0, 1, 2, 3)
    again = loaded.save(tmp_path / "again.safetensors")
    assert again.read_bytes() == path.read_bytes()


def test_fingerprint_mismatch_is_refused_unless_forced(tmp_path):
    path = bundle().save(tmp_path / "v.safetensors")
    same = Fingerprint.from_dict(FP)
    assert VectorBundle.load(path, expect=same).meta["concept"] == "toy"
    other = Fingerprint.from_dict({**FP, "embed_hash": "zzz"})
    with pytest.raises(VectorError, match="fitted on another model .*embed_hash"):
        VectorBundle.load(path, expect=other)
    assert VectorBundle.load(path, expect=other, force=True).vector.d_model == 8


def test_not_a_vector_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(VectorError, match="not a safetensors file"):
        VectorBundle.load(tmp_path / "x.safetensors")
    with pytest.raises(VectorError, match="no vector file"):
        VectorBundle.load(tmp_path / "missing.safetensors")


def test_controls_norm_matched_seeded():
    v = torch.randn(5, 300, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 6)[:, None]
    a, b = random_controls(v, 3, seed=7), random_controls(v, 3, seed=7)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    torch.testing.assert_close(a.norm(dim=-1), v.norm(dim=-1).expand(3, 5), rtol=1e-6, atol=1e-6)
    cosines = torch.nn.functional.cosine_similarity(a, v[None], dim=-1)
    assert cosines.abs().max() < 0.25  # 300 dims: random cosines have s.d. ~0.058
    assert torch.equal(random_controls(v, 1, seed=8)[0], a[1])  # control i uses seed + i


def test_vector_arithmetic():
    b = bundle()
    v = b.vector
    torch.testing.assert_close(v.at(2), v.directions[2])
    torch.testing.assert_close(v.selected(), v.directions[[1, 2]])
    torch.testing.assert_close((0.5 * v).at(1), 0.5 * v.directions[1])
    torch.testing.assert_close((-v).at(3), -v.directions[3])
    total = v + b.controls[0].select([3])
    assert total.layers == (1, 2, 3)
    torch.testing.assert_close(total.at(3), v.directions[3] + b.controls[0].directions[3])
    assert v.norms() == {
        1: pytest.approx(float(v.directions[1].norm())),
        2: pytest.approx(float(v.directions[2].norm())),
    }
    with pytest.raises(VectorError, match="no direction for layer 7"):
        v.select([7])
    alien = SteeringVector(v.directions, v.layers_available, v.layers, {**FP, "config_hash": "other"})
    with pytest.raises(VectorError, match="different models"):
        v + alien
    assert json.loads(json.dumps(b.meta)) == b.meta
