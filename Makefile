# Both targets set up .venv on a fresh machine first (scripts/setup.sh).
VENV ?= .venv

.PHONY: setup test demo

setup:
	bash scripts/setup.sh

test: setup
	bash scripts/test.sh

demo: setup
	$(VENV)/bin/seqr demo
