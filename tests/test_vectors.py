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


# ----------------------------------------------------------------------------- issue 14.2: files that cannot steer


def raw_file(path, vector, controls, meta=None):
    """Write a vector file with safetensors itself, as a damaged or foreign file would be (save() refuses these)."""
    from safetensors.torch import save_file

    meta = json.dumps(meta if meta is not None else bundle().meta)
    save_file({"vector": vector.contiguous(), "controls": controls.contiguous()}, str(path),
              metadata={"steerlab": meta})  # fmt: skip
    return path


def tensors():
    b = bundle(n_controls=2)
    return b.vector.directions.clone(), torch.stack([c.directions for c in b.controls])


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda v, c: v[2].__setitem__(5, float("nan")), "tensor 'vector' has non-finite values at layer 2"),
        (lambda v, c: v[0].__setitem__(0, float("-inf")), "tensor 'vector' has non-finite values at layer 0"),
        (lambda v, c: v[3].zero_(), "tensor 'vector' has zero norm at layer 3"),
        (lambda v, c: v[1].fill_(2e38), "tensor 'vector' has a norm that overflows float32 at layer 1"),
        (lambda v, c: c[1, 2].__setitem__(7, float("nan")), "tensor 'controls' (control 1) has non-finite values at"),
        (lambda v, c: c[0, 1].zero_(), "tensor 'controls' (control 0) has zero norm at layer 1"),
    ],
)  # fmt: skip
def test_a_file_with_a_degenerate_layer_is_refused_on_load(tmp_path, damage, says):
    vector, controls = tensors()
    damage(vector, controls)
    path = raw_file(tmp_path / "v.safetensors", vector, controls)
    with pytest.raises(VectorError) as info:
        VectorBundle.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {says}") and "refit" in message and "\n" not in message


def test_a_file_whose_header_does_not_match_its_tensors_is_refused(tmp_path):
    vector, controls = tensors()
    path = raw_file(tmp_path / "v.safetensors", vector[:3], controls[:, :3])
    with pytest.raises(VectorError, match=r"tensor shapes vector \[3, 8\], .* do not match the 4 layers"):
        VectorBundle.load(path)
    from safetensors.torch import save_file

    save_file({"vector": vector}, str(tmp_path / "b.safetensors"), metadata={"steerlab": '{"concept": '})
    with pytest.raises(VectorError, match="JSON header is broken"):
        VectorBundle.load(tmp_path / "b.safetensors")
    raw_file(tmp_path / "c.safetensors", vector, controls, meta={"concept": "toy"})
    with pytest.raises(VectorError, match="header lacks its layers"):
        VectorBundle.load(tmp_path / "c.safetensors")


def test_save_refuses_a_degenerate_vector_or_control_and_writes_nothing(tmp_path):
    b = bundle(n_controls=2)
    b.vector.directions[1, 3] = float("nan")
    with pytest.raises(VectorError, match=r"refusing to write .*v.safetensors: tensor 'vector' has non-finite values "
                                          r"at layer 1"):  # fmt: skip
        b.save(tmp_path / "v.safetensors")
    b = bundle(n_controls=2)
    b.controls[1].directions[0] = 0.0
    with pytest.raises(VectorError, match=r"tensor 'controls' \(control 1\) has zero norm at layer 0"):
        b.save(tmp_path / "v.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_inspect_json_is_standard_json_when_a_diagnostic_is_nan(tmp_path, capsys):
    from conftest import run_cli

    b = bundle()
    b.meta.update(method="logistic", C=1.0, locus="span_mean", model_source="synthetic", selection={"name": "list"})
    b.meta["diagnostics"] = {"per_layer": {"cv_auroc": [0.5, float("nan"), 0.9, 1.0], "cv_dprime": [float("inf")] * 4}}
    path = b.save(tmp_path / "v.safetensors")

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    code, out, err = run_cli(["vectors", "inspect", path, "--json"], capsys)
    assert code == 0, err
    meta = json.loads(out, parse_constant=strict)
    assert meta["diagnostics"]["per_layer"]["cv_auroc"] == [0.5, None, 0.9, 1.0]
    assert meta["diagnostics"]["per_layer"]["cv_dprime"] == [None] * 4
    assert meta["concept"] == "toy" and meta["layers"] == [0, 1, 2, 3]
