# The two entry points are `make lab` and `make test`; both set the node up first.
VENV    := .venv
PY      := $(VENV)/bin/python
PORT    ?= 8888
PYTEST_ARGS ?= --durations=15

.PHONY: setup kernelspec lab test lint unit privileged bench clean-labs record

setup:
	@bash scripts/setup.sh

kernelspec: setup
	@$(PY) -m workbench kernel install --sys-prefix >/dev/null

lab: kernelspec
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(PORT) --no-browser --allow-root \
		--ServerApp.root_dir=notebooks --MultiKernelManager.default_kernel_name=ebpf-workbench \
		--LabApp.default_url=/lab/tree/01-install.ipynb

lint: setup
	$(VENV)/bin/ruff check workbench tests bench
	$(VENV)/bin/mypy

test: kernelspec lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench $(if $(QUICK),--quick,)

# Regenerate the lab recording that replay mode serves (runs every tutorial on this lab node).
record: kernelspec
	$(PY) scripts/record_tutorials.py

clean-labs: setup
	$(PY) -m workbench lab down --all
