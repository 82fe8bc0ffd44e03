# One entry point: `make test` and `make demo` set everything up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU build of torch first, so the project's loose `torch>=` pin installs nothing more
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=
# ONNX Runtime flavour: onnxruntime-gpu where nvidia-smi runs, else the CPU wheel (never both: they
# break each other); `make gpu-check` then adds the TensorRT extra for the driver's CUDA
ORT_EXTRA ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: install test demo lint typecheck gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,ray,faces-dlib,app,$(ORT_EXTRA)]"
	# the stubs' metadata depends on tensorrt, whose libraries PyPI only serves to CUDA machines
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The demo restores the bundled whole photo (interlcm/assets/photo.jpg) at 2x, every face pasted back.
# Released weights when they can be downloaded (cached in .cache/release-weights: the download skips
# files already there and checked), else random tiny weights, which only show that the pipeline runs.
DEMO_DETECTOR ?= retinaface
demo: $(STAMP)
	@if $(VENV)/bin/interlcm-weights download --out .cache/release-weights; then \
	  echo "demo: restoring with the released weights"; \
	  $(VENV)/bin/interlcm-trt restore --weights .cache/release-weights --detector $(DEMO_DETECTOR) --out outputs/demo; \
	else \
	  echo "demo: the released weights cannot be downloaded here: using random tiny weights;" \
	       "the output only shows that the pipeline runs (detect, align, restore, paste back), not a restoration"; \
	  test -f .cache/demo-weights/interlcm.json || \
	    $(VENV)/bin/interlcm-weights init --preset tiny --seed 0 --out .cache/demo-weights --force; \
	  $(VENV)/bin/interlcm-trt restore --weights .cache/demo-weights --detector dlib --out outputs/demo; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(PY) -m interlcm.engines.trt_typecheck

# On a machine with an NVIDIA GPU and a CUDA build of torch: installs the TensorRT extra for the driver's
# CUDA, exports tiny and sd15 (random weights), builds engines, runs the gpu/trt tests and `check`,
# benchmarks, and writes gpu-check/report.json + report.md (see README, "Checking a GPU machine").
gpu-check: $(STAMP)
	$(PY) -m interlcm.engines.gpu_check --out gpu-check

clean:
	rm -rf $(VENV) .cache outputs
