# hafw developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY := .venv/bin/python
PYDIRS := _modules _states _utils _beacons _runners _wrapper lab tools test bench
PILLAR ?= pillar.example
OS_FAMILY ?= Debian
# only the paths that exist, so a missing directory never breaks lint
existing = $(wildcard $(1))
yaml_files = find . -path ./.git -prune -o -path ./.venv -prune -o -path ./.pytest-tmp -prune \
	-o -path ./.lab-run -prune -o -type f \( -name '*.yaml' -o -name '*.yml' -o -name 'pillar.example' \) -print
sls_files = find . -path ./.git -prune -o -path ./.venv -prune -o -path ./.pytest-tmp -prune \
	-o -path ./.lab-run -prune -o -type f -name '*.sls' -print

.PHONY: golden setup test test-lb pytest lint render demo demo-lb lab-clean bench

setup:
	@bash tools/setup.sh

lint: setup
	@rc=0; \
	echo "ruff: $(call existing,$(PYDIRS))"; $(PY) -m ruff check $(call existing,$(PYDIRS)) || rc=1; \
	files=$$($(yaml_files)); [ -z "$$files" ] || { \
		echo "yamllint: $$(wc -w <<<"$$files") files"; .venv/bin/yamllint $$files || rc=1; }; \
	files=$$($(sls_files)); [ -z "$$files" ] || { \
		echo "salt-lint: $$(wc -w <<<"$$files") files"; .venv/bin/salt-lint $$files || rc=1; }; \
	exit $$rc

# basetemp lives in a per-run dir under .pytest-tmp/, removed when the tests pass;
# the slowest tests are listed: make test must stay under 30 minutes (slow scenarios go to make bench)
test: setup lint
	@$(MAKE) --no-print-directory pytest MARK="not ipvs_guest"

# the load balancers' live tests, in the IPVS qemu guest (lab/guest/; ~15 minutes:
# Salt under emulation); CI runs them after make test
test-lb: setup
	@$(MAKE) --no-print-directory pytest MARK="ipvs_guest"

pytest:
	@run=.pytest-tmp/run-$$(date +%Y%m%d-%H%M%S)-$$$$; mkdir -p $$run; \
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 --basetemp=$$run/basetemp -m "$(MARK)" \
		$(call existing,test/unit test/functional test/integration); \
	rm -rf $$run

render: setup
	@test -n "$(NODE)" -a -n "$(OUT)" || { echo "usage: make render NODE=<minion id> OUT=<dir> [OS_FAMILY=RedHat] [PILLAR=<file>]" >&2; exit 2; }
	$(PY) -m tools.render --node "$(NODE)" --out "$(OUT)" --os-family "$(OS_FAMILY)" --pillar "$(PILLAR)"

golden: setup
	$(PY) -m tools.golden

demo: setup
	$(PY) -m tools.demo

# the reference path with the live load balancers (IPVS guest): failover and restart
demo-lb: setup
	$(PY) -m tools.demo_lb

lab-clean: setup
	$(PY) -m lab.clean

bench: setup
	@if [ -f bench/__main__.py ]; then $(PY) -m bench; exit; fi; \
	scripts=$$(ls bench/*.py 2>/dev/null | grep -v '/_[^/]*\.py$$' || true); \
	if [ -z "$$scripts" ]; then echo "bench: no bench/*.py scripts yet"; exit 0; fi; \
	for s in $$scripts; do echo "== $$s"; $(PY) $$s; done
