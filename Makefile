# Two commands do everything on a fresh machine:
#   make demo   creates .venv, installs the project, runs the shipped trained model on generated benchmark images
#               (writes outputs/demo/*.png: one budget heat-map per question)
#   make test   creates .venv, installs the project, runs the CPU test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all test-gpu-stack test-lmms bench clean

# --no-cache-dir: where torch comes from a registry over https, pip would also keep a ~4 GB copy of the CUDA wheels
# in its cache; a CI run once ran out of disk in this step.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -e ".[all]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m scripts.demo

test: setup
	$(PY) -m pytest -q -m "not gpu and not slow"

test-all: setup
	$(PY) -m pytest -q

# The GPU machine's preinstalled stack (torch 2.11, transformers 5.17, accelerate 1.15), on CPU, in its own venv:
# catches API drift before a GPU session is spent on it.
GPU_STACK_VENV ?= .venv-gpustack
test-gpu-stack:
	test -x $(GPU_STACK_VENV)/bin/python || $(PYTHON) -m venv $(GPU_STACK_VENV)
	$(GPU_STACK_VENV)/bin/python -m pip install -q --no-cache-dir torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 \
		accelerate==1.15.0 open_clip_torch==3.3.0 datasets==5.2.0 scipy numpy pytest hypothesis matplotlib \
		safetensors tqdm pyyaml scikit-learn pillow
	$(GPU_STACK_VENV)/bin/python -m pytest -q -m "not gpu and not slow"

# lmms-eval (an optional extra of ~80 packages) in its own venv layered on .venv (a .pth file reaches .venv's
# packages, the constraints keep torch/transformers/datasets at the project's pins): runs the adapter's and the
# task's tests against the real package, including an `lmms_eval` CLI run compared with eval.run_eval.
LMMS_VENV ?= .venv-lmms
test-lmms: setup
	test -x $(LMMS_VENV)/bin/python || $(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/python -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'arr_coc_base.pth')\
		.write_text(next(pathlib.Path('$(VENV)/lib').glob('python*/site-packages')).resolve().as_posix())"
	$(LMMS_VENV)/bin/python -m pip install -q --no-cache-dir -c constraints.txt "lmms-eval>=0.7"
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(LMMS_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/eval/test_lmms_adapter.py tests/eval/test_lmms_task.py

bench: setup
	$(PY) -m scripts.bench_allocators

clean:
	rm -rf $(VENV) outputs .pytest_cache .hypothesis
