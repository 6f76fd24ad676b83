# Two commands on a fresh clone:  `make run`  and  `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama.cpp's native build segfaults in ggml's AMX kernel on some CPUs: build a portable AVX2
# variant instead (pip caches the wheel, so only the first install compiles, ~4 min on 2 cores).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
QUESTION ?= In two sentences: why do mixtures of language models beat a single model?

.PHONY: run test lint typecheck install clean lock chromium postgresql eval-local eval-adaptive robustness bfcl eval-bfcl

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[local,dev,otel,eval,ray,postgres]'
	$(MAKE) bfcl
	touch $@

# BFCL's data, possible answers and AST checker (`moa eval --dataset bfcl-*`): the bfcl-eval
# package without its dependencies, which pin numpy 1.26 and pull torch, sentence-transformers,
# faiss and a dozen cloud SDKs; what moakit's use of it imports is in the `eval` extra.
bfcl:
	$(BIN)/pip install -q --no-deps -c requirements.lock bfcl-eval

# The BFCL comparison behind docs/eval-bfcl.md, on the embedded model (about an hour on 2 cores).
eval-bfcl: install
	$(BIN)/python scripts/eval_bfcl.py $(if $(EVAL_BUDGET_S),--budget-s $(EVAL_BUDGET_S))

install: $(VENV)/.installed

run: install
	$(BIN)/moa ask --preset local "$(QUESTION)"

lint: install
	$(BIN)/ruff check src tests $(wildcard bench) $(wildcard scripts)
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The UI tests drive a real headless Chromium: Debian's package (Playwright's own browser
# download is not used). Installed only when missing; CI runs as root.
chromium:
	@[ -x /usr/bin/chromium ] || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# The PostgreSQL trace-store tests start their own server from Debian's package (initdb into a
# temporary directory; no container, no system service). Installed only when missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)

# A third-party plugin kept under tests/ (one provider, one strategy), installed into the test
# environment the way a user installs one: the plugin tests use it through its entry point.
TEST_PLUGIN := tests/plugins/moakit-hello
$(VENV)/.test-plugin: $(VENV)/.installed $(wildcard $(TEST_PLUGIN)/pyproject.toml $(TEST_PLUGIN)/src/*/*.py)
	$(BIN)/pip install -q --no-deps $(TEST_PLUGIN)
	touch $@

test: install $(VENV)/.test-plugin chromium postgresql lint typecheck
	$(BIN)/pytest -q

# The embedded-model evaluation behind docs/eval-local.md: hours on 2 cores, resumable (the
# same command continues it); EVAL_BUDGET_S=3600 stops it after an hour and writes the page.
eval-local: install
	$(BIN)/python scripts/eval_local.py $(if $(EVAL_BUDGET_S),--budget-s $(EVAL_BUDGET_S))

# Adaptive compute on the embedded model, and the choice of the local preset behind
# docs/eval-adaptive.md: hours on 2 cores, resumable; EVAL_BUDGET_S stops it and writes the page.
eval-adaptive: install
	$(BIN)/python scripts/eval_adaptive.py all $(if $(EVAL_BUDGET_S),--budget-s $(EVAL_BUDGET_S))

# Red team vs defenses on the embedded model, plus the scripted simulation: docs/robustness.md.
robustness: install
	$(BIN)/python scripts/robustness_local.py $(if $(EVAL_BUDGET_S),--budget-s $(EVAL_BUDGET_S))

# Re-pin every dependency from the current venv (run after changing pyproject.toml).
lock: install
	$(BIN)/pip freeze --exclude-editable | grep -v '^moakit' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
