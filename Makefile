# The two commands of the README:
#   make example   build examples/demo into result/demo_1.0.raw
#   make test      run the whole test suite (lint, types, unit, squashfs, end-to-end on real systemd)
.PHONY: example test lint bench

example:
	scripts/bootstrap.sh
	.venv/bin/portable-service build examples/demo

test:
	scripts/bootstrap.sh --test
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy
