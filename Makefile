# The two commands of the README. Both create / reuse .venv/ (tools/setup_env.sh).
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests
