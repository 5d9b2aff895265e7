# make test   set up a virtual environment from requirements.txt and run every test
# make train  set up, then train the Fashion-MNIST preset (the main job)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
