# One entry point: `make test` and `make demo` set everything up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU build of torch first, so the project's loose `torch>=` pin installs nothing more
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test demo lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,faces-dlib]"
	# the stubs' metadata depends on tensorrt, whose libraries PyPI only serves to CUDA machines
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	test -f .cache/demo-weights/interlcm.json || $(VENV)/bin/interlcm-weights init --preset tiny --seed 0 --out .cache/demo-weights --force
	$(VENV)/bin/interlcm-trt restore --weights .cache/demo-weights --backend auto --out outputs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(PY) -m interlcm.engines.trt_typecheck

clean:
	rm -rf $(VENV) .cache outputs
