# The commands of the README. Each creates / reuses .venv/ (tools/setup_env.sh).
# make test runs every test (CI); make test-fast leaves out the tests marked slow (long
# end-to-end runs), for a quick check while developing. The 25 slowest tests are listed so the
# suite's time budget stays visible.
PY := .venv/bin/python

.PHONY: setup demo test test-fast
setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest tests --durations=25

test-fast: setup
	$(PY) -m pytest tests -m "not slow"
