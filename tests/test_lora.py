"""LoRA adapters on the HF backend: merged into the weights at load time."""

import torch

from steerlab.models import load_model


def test_a_saved_adapter_reloads_merged_and_changes_logits(tiny_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(str(tiny_dir), device="cpu")
    peft_model = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (a no-op adapter); make it do something
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = base.tokenizer("Think about the request first.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = load_model(str(tiny_dir), device="cpu").model(ids).logits
    merged = load_model(str(tiny_dir), device="cpu", lora=str(tmp_path / "adapter"))
    with torch.no_grad():
        got = merged.model(ids).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(got, plain, atol=1e-2)
    assert merged.source.endswith("+" + str(tmp_path / "adapter"))
    assert merged.fingerprint == base.fingerprint  # embeddings untouched: vectors still apply
