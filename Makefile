# SAERL Studio: `make run` serves the demo, `make test` runs lint, types and the whole test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRAINERS := $(VENV)/.trainers
DB ?= data/demo.duckdb
PORT ?= 8501
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test lint types demo bench clean-demo

$(STAMP): requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# verl and TRL for tests/e2e (the exports checked with the real trainers); not needed to run the app
$(TRAINERS): requirements-trainers.txt requirements-verl.txt | $(STAMP)
	$(BIN)/pip install --quiet -r requirements-trainers.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-verl.txt
	touch $(TRAINERS)

$(DB): | $(STAMP)
	$(BIN)/python -m core demo --db $(DB)

demo: $(STAMP)
	$(BIN)/python -m core demo --db $(DB)

run: $(STAMP) $(DB)
	$(BIN)/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) \
		--server.headless true --browser.gatherUsageStats false -- --db $(DB)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/pyright --level error

test: lint types $(TRAINERS)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/featurize.py
	$(BIN)/python bench/map_page.py

clean-demo:
	rm -f $(DB) $(DB).wal
