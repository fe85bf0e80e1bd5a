# Everything a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch lies on the build machines' disk; a looser pin downloads a CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO_DIR ?= runs/demo
DEMO_SECONDS ?= 180

.PHONY: install demo test lint bench bench-quality clean

$(BIN)/charlstm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[dev,plot,serve,export]"
	touch $@

install: $(BIN)/charlstm

demo: install
	@echo "== The bundled model (trained on Anna Karenina), no training needed:"
	$(BIN)/charlstm sample --prime "Anna" --length 300 --top-k 5 --temperature 0.8 --seed 1
	@echo "== Now a short run of your own on the same novel:"
	$(BIN)/charlstm train --out $(DEMO_DIR) --overwrite --max-time $(DEMO_SECONDS)
	$(BIN)/charlstm sample $(DEMO_DIR) --prime "Anna" --length 600 --top-k 5 --seed 1

test: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

# Each script writes its JSON into docs/bench/; report.py then renders docs/benchmarks.md from them.
bench: install
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_sample.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_ddp.py
	$(BIN)/python benchmarks/bench_threads.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/report.py

bench-quality: install
	$(BIN)/python benchmarks/bench_quality.py --minutes 10
	$(BIN)/python benchmarks/bench_levers.py
	$(BIN)/python benchmarks/bench_levers.py --minutes 10 --variants hidden_256 dropout_0
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
