.PHONY: train test ops

# Both targets build the virtual environment $(VENV) first, with packages from
# requirements.txt, under $(PYTHON): python3 if it is Python 3.10, 3.11 or 3.12, else the
# first of python3.12, python3.11, python3.10 that runs (override: make PYTHON=... VENV=...).
SUPPORTED = import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))
PYTHON ?= $(firstword $(foreach p,python3 python3.12 python3.11 python3.10,\
            $(shell $(p) -c '$(SUPPORTED)' >/dev/null 2>&1 && echo $(p))))
VENV ?= .venv

train: $(VENV) ops
	$(VENV)/bin/python train.py

test: $(VENV) ops
	$(VENV)/bin/python -m pytest -q tests

# The operator library (stngluon/ops.py: the threaded sampler, the one-pass standardisation, the fused Adam, the 2x2 average pooling, the FCN's input layer): g++ and the mxnet wheel's headers; where it
# cannot be built, training uses MXNet's own operators (same results) and make goes on.
ops: $(VENV)
	-$(VENV)/bin/python -m stngluon.ops

$(VENV): requirements.txt
	@$(if $(PYTHON),$(PYTHON) -c '$(SUPPORTED)' 2>/dev/null,false) || { echo 'error: stn-gluon needs Python 3.10, 3.11 or 3.12 (mxnet 1.9.1 needs numpy < 2, which has no wheels for 3.13), and $(if $(PYTHON),PYTHON=$(PYTHON) is not one,none of python3 python3.12 python3.11 python3.10 on PATH is one). Install one of them, or pass PYTHON=/path/to/python3.12.' >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $(VENV)
