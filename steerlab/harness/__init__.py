"""The evaluation harness every intervention method is measured with.

A *scenario* turns (request, condition) into chat messages and labels what comes back;
:mod:`steerlab.runs` runs rows of (vector arm, multiplier, condition, request, seed) through
a backend with it. Prompt claims change a condition's system prompt and SDF checkpoints are a
different model behind the backend; after the backend nothing knows which method ran.

    datasets.py   requests (AdvBench-style CSV/JSONL, a Hugging Face id, or a prompt file)
    scenario.py   plain and alignment-faking scenarios: messages, stop strings, continuation
    parse.py      scratchpad / <think> / <OUTPUT> parsing and the compliance label
    metrics.py    Wilson intervals, the alignment-faking gap with bootstrap, two-proportion test
    judge.py      rubric scoring of scratchpads (Anthropic API or a local model), on-disk cache
    records.py    run directories -> pandas
"""
