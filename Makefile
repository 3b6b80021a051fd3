.PHONY: run test bench lint container-check

run:  ## set up and run web + worker(s) + Redis on this machine
	@scripts/serve.sh

test:  ## set up and run lint and the whole test suite
	scripts/test.sh

bench:  ## run every benchmark with its default (full) settings
	scripts/bootstrap.sh --dev && .venv/bin/python -m bench all

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

container-check:  ## build the image and run compose's production profile for real (root; ~13 min, cached ~2 min)
	scripts/container-check.sh
