import pytest
import torch
import transformers
from conftest import run_cli

from steerlab.errors import ConfigError, ModelLoadError
from steerlab.models import check_layers, find_blocks, fingerprint, load_model

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)

FAMILIES = {
    "LlamaForCausalLM": (transformers.LlamaConfig, SMALL),
    "Qwen2ForCausalLM": (transformers.Qwen2Config, SMALL),
    "MistralForCausalLM": (transformers.MistralConfig, SMALL),
    "GemmaForCausalLM": (transformers.GemmaConfig, {**SMALL, "head_dim": 8}),
    "Gemma2ForCausalLM": (transformers.Gemma2Config, {**SMALL, "head_dim": 8}),
    "OlmoForCausalLM": (transformers.OlmoConfig, SMALL),
    "Olmo2ForCausalLM": (transformers.Olmo2Config, SMALL),
    "GPT2LMHeadModel": (transformers.GPT2Config, dict(vocab_size=64, n_embd=32, n_head=4)),
    "GPTNeoXForCausalLM": (
        transformers.GPTNeoXConfig,
        dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64),
    ),
}


def build(arch, n_layers=3):
    config_cls, kwargs = FAMILIES[arch]
    layer_key = "n_layer" if arch == "GPT2LMHeadModel" else "num_hidden_layers"
    config = config_cls(**kwargs, **{layer_key: n_layers})
    torch.manual_seed(0)
    return getattr(transformers, arch)(config).eval()


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_find_blocks_every_family(arch):
    model = build(arch, n_layers=3)
    blocks = find_blocks(model)
    assert len(blocks) == 3
    # the blocks found are the ones the forward pass runs: hook them and count calls
    calls = []
    handles = [b.register_forward_hook(lambda *_: calls.append(1)) for b in blocks]
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))
    for h in handles:
        h.remove()
    assert len(calls) == 3
    fp = fingerprint(model)
    assert (fp.architecture, fp.n_layers, fp.d_model) == (arch, 3, 32)


def test_find_blocks_names_the_class_when_it_cannot():
    model = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
    )
    with pytest.raises(ModelLoadError, match="cannot find the decoder blocks of BertModel"):
        find_blocks(model)


def test_fingerprint_identifies_weights_and_survives_dtype():
    a, b = build("LlamaForCausalLM"), build("LlamaForCausalLM")
    assert fingerprint(a) == fingerprint(b)  # same seed, same weights
    torch.manual_seed(1)
    c = transformers.LlamaForCausalLM(a.config).eval()
    assert fingerprint(c).differences(fingerprint(a)) == ["embed_hash"]
    assert fingerprint(a.to(torch.bfloat16)) == fingerprint(b)  # bf16 load of the same weights
    deeper = build("LlamaForCausalLM", n_layers=4)
    assert set(fingerprint(deeper).differences(fingerprint(b))) >= {"n_layers", "config_hash"}


def test_load_model_from_saved_dir_matches_original(tiny, tiny_dir):
    loaded = load_model(str(tiny_dir), device="cpu")
    assert loaded.fingerprint == tiny.fingerprint
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        assert torch.equal(loaded.model(ids).logits, tiny.model(ids).logits)
    assert loaded.tokenizer.chat_template == tiny.tokenizer.chat_template


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="no model at"):
        load_model(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelLoadError, match="not on the hub or in its cache"):
        load_model("steerlab-test/no-such-model-xyz", device="cpu")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model("steerlab-test/no-such-model-xyz", device="cpu", dtype="float8")


def test_check_layers():
    assert check_layers(None, 4) == [0, 1, 2, 3]
    assert check_layers([3, 1], 4) == [1, 3]
    with pytest.raises(ConfigError, match=r"out of range: this model has 4 layers, numbered 0..3"):
        check_layers([4], 4)
    with pytest.raises(ConfigError, match="twice"):
        check_layers([1, 1], 4)


def test_cli_model_info_and_unknown_model(tiny, tiny_dir, capsys):
    code, out, err = run_cli(["model", "info", tiny_dir], capsys)
    assert code == 0, err
    assert tiny.fingerprint.embed_hash in out
    code, out, err = run_cli(["model", "info", "steerlab-test/no-such-model-xyz"], capsys)
    assert code == 2 and err.startswith("steerlab: error: cannot load model") and err.count("\n") == 1
