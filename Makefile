# mmsent: `make run` sets everything up and trains + predicts on the data; `make test` sets up and runs the tests;
# `make demo` trains a quick run and serves its web page.
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= ../shared/data/mvsa
SAMPLE ?= sample/mvsa
RUN    ?= runs/default
DEMO   ?= runs/demo
PORT   ?= 8000
ARGS   ?=
BIN     = $(VENV)/bin

# The data run and demo read: DATA where it exists; the bundled sample where the default DATA is absent (a DATA
# given on the command line or in the environment is used as given, so a wrong path is an error, not the sample).
ifeq ($(origin DATA)$(wildcard $(DATA)),file)
USE_DATA    = $(SAMPLE)
SAMPLE_ARGS = --profile fast
SAMPLE_NOTE = @echo "data folder $(DATA) not found: using the bundled sample $(SAMPLE) (put MVSA-Single there or pass DATA=...)"
else
USE_DATA    = $(DATA)
SAMPLE_ARGS =
SAMPLE_NOTE = @true
endif

.PHONY: setup run demo test bench bench-gpu clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel this machine ships on disk (an unpinned torch pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,test]'
	touch $@

# On the sample (300 posts) the run trains --profile fast: a minute on a 2-core CPU; the default takes minutes more.
run: setup
	$(SAMPLE_NOTE)
	$(BIN)/mmsent check --data $(USE_DATA)
	$(BIN)/mmsent train --data $(USE_DATA) --out $(RUN) --overwrite $(SAMPLE_ARGS) $(ARGS)
	$(BIN)/mmsent predict --run $(RUN) --data $(USE_DATA) --out $(RUN)/predictions.txt

# The shortest way to the web page: train --profile fast into DEMO unless a finished run is there, then serve it.
demo: setup
	$(SAMPLE_NOTE)
	@if [ -f $(DEMO)/metrics.json ]; then echo "serving the run in $(DEMO) (remove that folder to retrain)"; \
	else $(BIN)/mmsent train --data $(USE_DATA) --out $(DEMO) --overwrite --profile fast $(ARGS); fi
	$(BIN)/mmsent serve --run $(DEMO) --port $(PORT)

test: setup
# Two processes: OpenVINO's tests run in one of their own (with OpenVINO loaded, a later test in the same process
# crashed now and then in native code). -rs: every skipped test (README blocks too) with its reason.
	$(BIN)/python -m pytest -q -rs -m "not openvino"
	$(BIN)/python -m pytest -q -rs -m openvino

bench: setup
	$(BIN)/python benchmarks/bench_backends.py --data $(DATA)
	$(BIN)/python benchmarks/bench_features.py --data $(DATA)
	$(BIN)/python benchmarks/bench_cv.py --data $(DATA)
	@if [ -f $(RUN)/config.json ]; then $(BIN)/python benchmarks/bench_predict.py --run $(RUN) --data $(DATA); \
	else echo "bench_predict.py skipped: no run in $(RUN) (make run trains one)"; fi

bench-gpu: setup  # on a machine with a CUDA GPU: pytest -m gpu, then the frozen default and --profile quality
	PATH=$(BIN):$$PATH bash benchmarks/bench_gpu.sh all $(DATA)

clean:
	rm -rf $(VENV) build src/*.egg-info
