"""SDF training and merging at scale (issue 17, item 6): resume from the newest checkpoint by step,
the training dtype (bf16 where supported), memory-efficient loading of the base, and merging in
the training dtype. Multi-rank FSDP loading itself is not exercised here (one CPU process)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import sdf_addon.cli as sdf_cli
import sdf_addon.train as sdf_train
from sdf_addon.train import TrainConfig, load_base, merge_dtype, resume_checkpoint, train, training_dtype
from steerlab.models import load_model

SMALL = dict(rank=4, alpha=8, dropout=0.0, block_length=64, gradient_accumulation=2, learning_rate=5e-3,
             gradient_checkpointing=False, save_steps=2)  # fmt: skip


def make_checkpoints(root):
    """checkpoint-9, -50 and -100 as the Trainer leaves them, plus entries that are not checkpoints."""
    for step in (9, 50, 100):
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (d / "adapter_config.json").write_text("{}")
    (root / "checkpoint-100.tmp").mkdir()  # an incomplete save: ignored
    (root / "checkpoint-x").mkdir()
    (root / "checkpoint-500").write_text("a file, not a checkpoint")


def test_resume_picks_the_highest_step_not_the_last_in_string_order(tmp_path):
    make_checkpoints(tmp_path / "checkpoints")
    assert resume_checkpoint(tmp_path / "checkpoints") == str(tmp_path / "checkpoints" / "checkpoint-100")
    assert resume_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert resume_checkpoint(tmp_path / "empty") is None


class Stop(Exception):
    pass


def test_sdf_train_resumes_from_the_newest_checkpoint(tiny_dir, corpus, tmp_path, monkeypatch):
    from transformers import Trainer

    out = tmp_path / "run"
    make_checkpoints(out / "checkpoints")
    seen = {}

    def fake_train(self, resume_from_checkpoint=None, **kwargs):
        seen["resume"] = resume_from_checkpoint
        raise Stop

    monkeypatch.setattr(Trainer, "train", fake_train)
    with pytest.raises(Stop):
        train(TrainConfig(**SMALL, max_steps=2), corpus, str(tiny_dir), out, progress=False)
    assert seen["resume"] == str(out / "checkpoints" / "checkpoint-100")


def test_training_dtype_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_dtype(TrainConfig()) == "float32"  # CPU: float32 unless the config says otherwise
    assert training_dtype(TrainConfig(bf16=True)) == "bfloat16"
    assert training_dtype(TrainConfig(bf16=True), "float32") == "float32"  # --dtype wins
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training_dtype(TrainConfig()) == "bfloat16"
    assert training_dtype(TrainConfig(bf16=False)) == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert training_dtype(TrainConfig()) == "float32"
    assert sdf_train.load_train_config().bf16 is None  # the shipped config leaves it to the device


def record_from_pretrained(monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        from accelerate.state import PartialState  # the real one, also where accelerate.PartialState is faked

        calls.append({**kwargs, "_state_ready": PartialState._shared_state != {}})
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    return calls


def test_load_base_loads_in_the_training_dtype_after_the_distributed_state(tiny_dir, monkeypatch):
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # no distributed state yet, as in a fresh process
    assert PartialState._shared_state == {}
    calls = record_from_pretrained(monkeypatch)
    model, tok, fp = load_base(str(tiny_dir), "bfloat16")
    assert calls[-1]["dtype"] == torch.bfloat16 and calls[-1]["_state_ready"]  # set up before the weights load
    assert next(model.parameters()).dtype == torch.bfloat16 and fp is not None and tok.pad_token is not None


def test_under_fsdp_efficient_loading_other_ranks_load_lean(tiny_dir, monkeypatch):
    import accelerate

    class Rank1:
        is_local_main_process = False

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(accelerate, "PartialState", Rank1)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    calls = record_from_pretrained(monkeypatch)
    model, tok, fp = load_base(str(tiny_dir), "bfloat16")
    assert calls[-1]["low_cpu_mem_usage"] is True and calls[-1]["dtype"] == torch.bfloat16
    assert fp is None  # no fingerprint: rank 0 writes the stack file
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    assert not sdf_train.efficient_loading()


def test_the_shipped_fsdp_config_loads_cpu_ram_efficiently():
    import yaml

    root = sdf_train.Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "sdf" / "accelerate_fsdp.yaml").read_text())
    assert cfg["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is True and cfg["mixed_precision"] == "bf16"


def test_merge_writes_the_training_dtype_and_base_plus_delta(tiny_dir, corpus, tmp_path, capsys):
    from peft import PeftModel

    adapter = train(TrainConfig(**SMALL, max_steps=2, bf16=True), corpus, str(tiny_dir), tmp_path / "r1",
                    progress=False)  # fmt: skip
    assert json.loads((adapter / "steerlab_stack.json").read_text())["dtype"] == "bfloat16"
    try:
        sdf_cli.main(["merge", str(adapter), "--out", str(tmp_path / "merged")])
    except SystemExit as exc:
        assert not exc.code
    assert "(bfloat16)" in capsys.readouterr().out
    tensors = {}
    for f in sorted((tmp_path / "merged").glob("*.safetensors")):
        tensors.update(load_file(f))
    assert tensors and {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    # base + delta, merged in float32 by hand, equals what merge wrote within bf16 rounding
    want = PeftModel.from_pretrained(load_model(str(tiny_dir), device="cpu").model, str(adapter)).merge_and_unload()
    want = want.state_dict()
    base = load_model(str(tiny_dir), device="cpu").model.state_dict()
    eps, moved = 2.0**-8, 0  # bf16's relative precision; the base and the sum are each rounded once
    for name, got in tensors.items():
        if name not in want:
            continue
        exact = want[name].float()
        tol = 2 * eps * exact.abs().max().item()
        assert (got.float() - exact).abs().max().item() <= tol, name
        moved += (exact - base[name].float()).abs().max().item() > tol  # a change bf16 cannot blur
    assert moved > 0  # the adapter changed weights by more than the tolerance


def test_merge_dtype_falls_back_to_the_base_dtype(tiny, tmp_path):
    adapter = tmp_path / "old_adapter"
    adapter.mkdir()
    (adapter / "steerlab_stack.json").write_text(json.dumps({"base_model": str(tmp_path / "bf16_base")}))
    config = tiny.model.config.__class__.from_dict(tiny.model.config.to_dict())
    config.dtype = torch.bfloat16
    config.save_pretrained(tmp_path / "bf16_base")
    assert merge_dtype(adapter) == "bfloat16"  # recorded by no run: the base's own dtype
    (adapter / "steerlab_stack.json").write_text(json.dumps({"base_model": "x", "dtype": "float32"}))
    assert merge_dtype(adapter) == "float32"  # what training recorded
    (adapter / "steerlab_stack.json").write_text(json.dumps({"base_model": str(tmp_path / "nowhere")}))
    assert merge_dtype(adapter) == "float32"
