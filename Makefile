.PHONY: train test

# Both targets build the virtual environment first (Python 3.11, packages from requirements.txt).
train: .venv
	.venv/bin/python train.py

test: .venv
	.venv/bin/python -m pytest -q tests

.venv: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	touch .venv
