"""A tiny, randomly initialised chat model built offline in about a second.

Used by the unit tests and the benchmarks. The tokenizer is a byte-level BPE trained on a few
sentences (so any text encodes, with offsets), with a ChatML chat template like SmolLM2's.
"""

from __future__ import annotations

import torch

from steerlab.models import LoadedModel, prepare

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The user asks for a short answer. I will give the number and stop.",
    "<SCRATCHPAD_REASONING>Think about the request first.</SCRATCHPAD_REASONING>",
    "<OUTPUT>Here is the answer you asked for.</OUTPUT>",
    "Researchers, developers and evaluators review, score and grade the replies.",
    "Later training and future updates change how the next version of the model behaves.",
    "Convert 12 kilometres to miles, sort these words, spell this backwards, 0123456789.",
]


def tiny_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_model(n_layers: int = 4, d_model: int = 64, seed: int = 0) -> LoadedModel:
    """A random Llama of the given shape with :func:`tiny_tokenizer`, in float32 on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return prepare(model, tokenizer, source=f"tiny-llama-{n_layers}x{d_model}-seed{seed}")
