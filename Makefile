# Set-up is automatic: the first `make train` or `make test` creates .venv and installs vhred.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= dailydialog
CONFIG ?= configs/dailydialog-cpu.yaml
ARGS   ?=
# On DailyDialog, `make train` then trains the run's reply critic (`make critic`), by which chat,
# the API and the server rank replies (docs/rating.md); CRITIC=no leaves it out.
CRITIC ?= $(if $(filter dailydialog,$(DATA)),yes,no)
CRITIC_OK := $(if $(filter 1,$(words $(CRITIC))),$(filter yes no,$(CRITIC)))
# The rounds the rated critics learned from (docs/rating.md); make train and make critic train on them
RATED := --ratings $$(cat eval/critic_rounds.txt)

# The local DailyDialog copy beside the checkout, when there is one (no internet needed then).
SHARED_DAILYDIALOG := ../shared/data/dailydialog/ijcnlp_dailydialog.zip
ifneq ($(wildcard $(SHARED_DAILYDIALOG)),)
export DAILYDIALOG_SRC ?= $(abspath $(SHARED_DAILYDIALOG))
endif

# The run `make eval` and `make critic` work on: the newest runs/*/best.pt unless RUN= is given
RUN ?= $(shell ls -t runs/*/best.pt 2>/dev/null | head -n 1)

.PHONY: help venv train critic test test-fast bench bench-scale bench-serve chat serve eval compare gpu-check clean-venv
.DEFAULT_GOAL := help

# `make` alone lists the targets; each one that needs the environment creates it first.
help:
	@echo "make train DATA=dailydialog     train VHRED and its reply critic (CONFIG=configs/dailydialog.yaml: the reference size)"
	@echo "make train DATA=my.jsonl        train on your own conversations (docs/data.md); ARGS=\"key=value ...\" for any setting"
	@echo "make critic RUN=runs/<name>     the reply critic that ranks a run's candidates (docs/rating.md)"
	@echo "make chat ARGS=\"--checkpoint runs/<name>\"   talk to a run in the terminal"
	@echo "make serve                      the HTTP API and chat page on http://127.0.0.1:8000/ (docs/serving.md)"
	@echo "make eval RUN=runs/<name>       evaluate a run on the test split (docs/evaluation.md)"
	@echo "make compare                    every model family for the same steps, one table (docs/models.md)"
	@echo "make test / make test-fast      the test suite / without the end-to-end command tests"
	@echo "make bench / bench-serve / bench-scale   speed and memory figures (docs/benchmarks.md)"
	@echo "make gpu-check                  on a GPU machine: the device checks (docs/gpu.md)"
	@echo "make venv / make clean-venv     create / remove the virtual environment .venv"

venv: $(STAMP)

# torch is installed first and pinned, so pip takes the CPU build where one is provided locally;
# the Python is checked first, as pip would check it only after torch (pyproject: requires-python).
NEW_ENOUGH := -c 'import sys; sys.exit(sys.version_info < (3, 10))'
$(STAMP): pyproject.toml
	@$(BIN)/python $(NEW_ENOUGH) 2>/dev/null || test ! -e $(BIN)/python || { echo "error: .venv was made with a Python older than 3.10: remove it (make clean-venv), then run again, with PYTHON=python3.x if python3 is older" >&2; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) $(NEW_ENOUGH) || { echo "error: vhred needs Python 3.10 or newer, and $(PYTHON) is older (or missing): give one, e.g. PYTHON=python3.11" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# A critic newer than the run's best.pt is kept: running the command again after it ended costs nothing
# (and writes the readers' table, kept.json, where an older critic came without one).
train: $(STAMP)
	@test -n "$(CRITIC_OK)" || { echo "error: CRITIC takes yes or no (CRITIC=no: no reply critic after the model)" >&2; exit 2; }
	$(BIN)/python -m vhred.train --config "$(CONFIG)" "data=$(DATA)" $(ARGS)
	@run="$$($(BIN)/python -m vhred.train --config "$(CONFIG)" "data=$(DATA)" $(ARGS) --run-dir)" && \
	if [ "$(CRITIC)" = no ]; then :; \
	elif [ "$$run/critic.safetensors" -nt "$$run/best.pt" ]; then echo "$$run/critic.safetensors is newer than its best.pt: kept"; \
		test -f "$$run/kept.json" || $(BIN)/python -m vhred.kept --checkpoint "$$run" $(RATED) || exit; \
	else $(BIN)/python -m vhred.critic_train --checkpoint "$$run" $(RATED) || exit; fi && \
	case "$$run" in *" "*) run="'$$run'";; esac && \
	echo "next: $(BIN)/vhred chat --checkpoint $$run   (or source $(BIN)/activate, then vhred chat)"

# The reply critic that ranks a run's candidates, trained on the blind rating rounds the rated
# critics learned from, eval/critic_rounds.txt (docs/rating.md): make critic RUN=runs/dailydialog-cpu-vhred
critic: $(STAMP)
	@test -n "$(RUN)" || { echo "error: no runs/*/best.pt found; train one with make train DATA=dailydialog, or give RUN=runs/<name>" >&2; exit 2; }
	$(BIN)/python -m vhred.critic_train --checkpoint "$(RUN)" $(RATED) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# The tests without the subprocess ones (the commands run as a user would): a quicker loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

# Speed and memory figures (python -m vhred.bench --help); not part of the tests.
bench: $(STAMP)
	$(BIN)/python -m vhred.bench $(ARGS)

# Serving: requests/s and p50/p95 latency at 1/8/32 clients, with and without batching (docs/benchmarks.md)
bench-serve: $(STAMP)
	$(BIN)/python -m vhred.bench --serve $(ARGS)

# Preparation time and memory, training speed, on corpora 1x/10x/100x DailyDialog (python -m vhred.bench_scale --help)
bench-scale: $(STAMP)
	$(BIN)/python -m vhred.bench_scale $(ARGS)

# Full evaluation of a run on the test split: make eval RUN=runs/dailydialog-cpu-vhred
eval: $(STAMP)
	@test -n "$(RUN)" || { echo "error: no runs/*/best.pt found; train one with make train DATA=dailydialog, or give RUN=runs/<name>" >&2; exit 2; }
	$(BIN)/python -m vhred.evaluate --checkpoint "$(RUN)" $(ARGS)
	r="$(RUN)"; case "$$r" in *.pt) r=$$(dirname "$$r");; esac; $(BIN)/python -m vhred.plot "$$r"

# Every model family trained for the same steps and evaluated alike, one table in docs/ (docs/models.md)
compare: $(STAMP)
	$(BIN)/python -m vhred.compare $(ARGS)

chat: $(STAMP)
	$(BIN)/python -m vhred.chat $(ARGS)

# The HTTP API and chat page on http://127.0.0.1:8000/ (make serve ARGS="--checkpoint runs/x --port 8001")
serve: $(STAMP)
	$(BIN)/python -m vhred.serve $(ARGS)

# On a machine with a GPU: GRU dtype and kernels, resume on the device, torchrun, bench (docs/gpu.md)
gpu-check: $(STAMP)
	$(BIN)/python -m vhred.gpu_check $(ARGS)

clean-venv:
	rm -rf $(VENV)
