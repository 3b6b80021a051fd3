.PHONY: run test bench lint mutate container-check

run:  ## set up and run web + worker(s) + Redis on this machine
	@scripts/serve.sh

test:  ## set up and run lint and the whole test suite
	scripts/test.sh

bench:  ## run every benchmark with its default (full) settings
	scripts/bootstrap.sh --dev && .venv/bin/python -m bench all

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

mutate:  ## mutation testing of the guarantee modules; MODULE=imgsvc/storage/jobs.py FUNCTIONS='mark_*' to narrow
	scripts/bootstrap.sh --dev && scripts/ensure-redis.sh "$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15}" >/dev/null \
	  && .venv/bin/python scripts/mutate.py $(MODULE) --functions "$(FUNCTIONS)"

container-check:  ## build the image and run compose's production profile for real (root; 5-13 min, cached ~1 min)
	scripts/container-check.sh
