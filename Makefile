# mmsent: `make run` sets everything up and trains + predicts on the data; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
DATA   ?= ../shared/data/mvsa
RUN    ?= runs/default
ARGS   ?=
BIN     = $(VENV)/bin

.PHONY: setup run test bench bench-gpu clean

setup: $(VENV)/.installed

# torch is pinned to the CPU wheel this machine ships on disk (an unpinned torch pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,test]'
	touch $@

run: setup
	$(BIN)/mmsent check --data $(DATA)
	$(BIN)/mmsent train --data $(DATA) --out $(RUN) --overwrite $(ARGS)
	$(BIN)/mmsent predict --run $(RUN) --data $(DATA) --out $(RUN)/predictions.txt

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
