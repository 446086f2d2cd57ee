import re

from conftest import run_cli


def test_steer_prints_steered_and_unsteered(tiny_dir, tiny_vector, capsys):
    args = ["steer", "--model", tiny_dir, "--vector", tiny_vector, "--alpha", "0,4",
            "--prompt", "Spell garden backwards", "--compare", "--max-new-tokens", "6"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    texts = dict(re.findall(r"^--- (\S+) \(\w+\)\n(.*?)(?=^--- |\Z)", out, flags=re.S | re.M))
    assert set(texts) == {"unsteered", "alpha=+0", "alpha=+4"}
    assert texts["alpha=+0"] == texts["unsteered"] != texts["alpha=+4"]
    code, out, _ = run_cli([*args[:6], "0.5", *args[7:], "--control", "1", "--scale", "relative"], capsys)
    assert code == 0


def test_steer_prompt_file_and_chat(tiny_dir, tiny_vector, tmp_path, capsys, monkeypatch):
    (tmp_path / "p.jsonl").write_text('{"prompt": "Hi"}\n{"messages": [{"role": "user", "content": "Sort these"}]}\n')
    code, out, err = run_cli(["steer", "--model", tiny_dir, "--vector", tiny_vector, "--alpha", "2",
                              "--prompts", tmp_path / "p.jsonl", "--max-new-tokens", "3"], capsys)  # fmt: skip
    assert code == 0, err
    assert "=== prompt 0: Hi" in out and "=== prompt 1: Sort these" in out
    replies = iter(["Hello there", ""])
    monkeypatch.setattr("builtins.input", lambda _: next(replies))
    code, out, err = run_cli(["steer", "--model", tiny_dir, "--vector", tiny_vector, "--alpha", "2", "--chat",
                              "--max-new-tokens", "3"], capsys)  # fmt: skip
    assert code == 0, err
    assert "alpha=+2>" in out


def test_steer_bad_input(tiny_dir, tiny_vector, tmp_path, capsys):
    base = ["steer", "--model", tiny_dir, "--vector", tiny_vector, "--max-new-tokens", "2"]
    cases = [
        (["--alpha", "nan", "--prompt", "x"], "is not a finite number"),
        (["--alpha", "1", "--prompt", "x", "--chat"], "exactly one of --prompt, --prompts or --chat"),
        (["--alpha", "1", "--prompt", "x", "--layers", "9"], "layer 9 is out of range (the model has 4 layers, 0..3)"),
        (["--alpha", "1", "--prompt", "x", "--control", "5"], "--control 5: the file has 2 controls"),
        (["--alpha", "1,2", "--chat"], "--chat takes a single --alpha"),
        (["--alpha", "1", "--prompts", tmp_path / "empty.txt"], "holds no prompts"),
    ]
    (tmp_path / "empty.txt").write_text("\n")
    for extra, message in cases:
        code, _, err = run_cli([*base, *extra], capsys)
        assert code == 2 and message in err, (extra, err)


def test_steer_refuses_a_vector_for_another_model(tiny_vector, tmp_path, capsys):
    from steerlab.testing import tiny_model

    other = tiny_model(seed=5)
    other.model.save_pretrained(tmp_path / "other")
    other.tokenizer.save_pretrained(tmp_path / "other")
    args = ["steer", "--model", tmp_path / "other", "--vector", tiny_vector, "--alpha", "1", "--prompt", "x",
            "--max-new-tokens", "2"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "fitted on another model (fingerprint differs in embed_hash)" in err
    code, _, err = run_cli([*args, "--force"], capsys)
    assert code == 0, err


def test_vllm_backend_without_vllm_says_how_to_install(tiny_vector, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # as where vLLM is not installed
    args = ["steer", "--backend", "vllm", "--vector", tiny_vector, "--alpha", "1", "--prompt", "hi"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "needs vLLM: `pip install vllm`" in err
    code, _, err = run_cli([*args[:2], "hf", *args[3:], "--lora", "adapter/"], capsys)
    assert code == 2 and "adapter/ is not a LoRA adapter directory" in err and "Loading weights" not in err
