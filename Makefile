# One entry point: `make test` and `make demo` set everything up on a fresh machine.
# VENV may name an existing environment (e.g. one with the machine's CUDA torch): make installs into it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
GPU    := $(shell nvidia-smi >/dev/null 2>&1 && echo yes)
# torch first, the build for this machine, so the project's loose `torch>=` pin installs nothing more
# (README, "Installing torch"). Without an NVIDIA GPU: the CPU build (PyPI's Linux wheel is a CUDA build of
# several GB). With one: the CUDA build the driver runs (scripts/gpu_check.py reads nvidia-smi), and a CUDA
# torch already in the environment is kept. pip looks in TORCH_INDEX besides PyPI and prefers its build
# (2.13.0+cpu sorts above 2.13.0); where that index cannot be reached it takes what PyPI (or pip's local
# wheels) has, after a few retries. TORCH_INDEX= (empty) installs PyPI's default build.
TORCH  ?= torch==2.13.0
TORCH_INDEX ?= $(if $(GPU),$(shell $(PYTHON) scripts/gpu_check.py --torch-index),https://download.pytorch.org/whl/cpu)
# ONNX Runtime flavour: onnxruntime-gpu where nvidia-smi runs, else the CPU wheel (never both: they
# break each other); `make gpu-check` then adds the TensorRT extra for the driver's CUDA
ORT_EXTRA ?= $(if $(GPU),gpu,cpu)
GPU_CHECK_ARGS ?=

.PHONY: install test demo lint typecheck gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null; then \
	  echo "torch: keeping the installed CUDA build $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "torch: $(TORCH)$(if $(TORCH_INDEX), from $(TORCH_INDEX) (or PyPI))"; \
	  $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)); \
	fi
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

# On a machine with an NVIDIA GPU: installs the GPU extras for the driver's CUDA (keeping a CUDA torch), runs
# the gpu/trt tests, exports tiny and sd15, builds engines, restores a photo and a video on every backend
# against the CPU, benchmarks, and writes gpu-check/report.md (README, "Checking a GPU machine").
# GPU_CHECK_ARGS="--quick --no-install": tiny only, this environment as it is.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py --out gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .cache outputs
