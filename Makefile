# SysCare build, test and demo entry points. `make help` lists the targets.
GO      ?= go
BIN     := bin
PYTHON  := /usr/bin/python3
GOTESTFLAGS ?= -count=1 -timeout 40m
# The recipes below pipe go test into tests/testreport: pipefail keeps go test's status.
SHELL   := /bin/bash
.SHELLFLAGS := -o pipefail -c
# testreport prints one line per package, failed tests' output, skipped tests with their
# reason and the slowest tests; it keeps the raw stream in bin/ for CI's summary.
TESTREPORT = $(GO) run ./tests/testreport -save
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# Every directory <component>/cmd/<name> is a binary, built into bin/<name>.
CMDS := $(wildcard */cmd/*)

# A long end-to-end test calls testenv.NeedE2E, which skips it unless SYSCARE_E2E=1;
# `make test-e2e` runs every package holding one with the switch on.
E2E_PKGS := $(sort $(patsubst %/,./%,$(dir $(shell grep -rl --include='*_test.go' 'testenv\.NeedE2E' . | sed 's|^\./||'))))

.PHONY: all build test test-unit dist srpm rpm man test-go test-python test-e2e demo bench soak lint deps check-deps help clean

all: build ## build every binary into bin/

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./,$(CMDS))

check-deps: ## install the system packages if one is missing
	@tests/deps.sh --check >/dev/null 2>&1 || tests/deps.sh

deps: ## install the system packages (apt or dnf)
	tests/deps.sh

test: check-deps build test-go test-python ## unit and component tests (needs root); the long ones: test-e2e

test-go:
	@mkdir -p $(BIN)
	$(GO) test -json $(GOTESTFLAGS) ./... 2>&1 | $(TESTREPORT) $(BIN)/test-fast.json

test-python:
	@if ls dnf-plugin/tests/test_*.py >/dev/null 2>&1; then \
		$(PYTHON) -m pytest -q dnf-plugin/tests; \
	else echo "test-python: no plugin tests yet"; fi

test-e2e: check-deps build ## long end-to-end tests (qemu kernel, upstream sources, nginx, redis)
	@mkdir -p $(BIN)
	SYSCARE_E2E=1 $(GO) test -json $(GOTESTFLAGS) $(E2E_PKGS) 2>&1 | $(TESTREPORT) $(BIN)/test-e2e.json

# The unit tests that need neither root nor a service: the spec's %check runs them.
UNIT_PKGS := ./runtime/patchobj ./runtime/elfsafe ./runtime/patchmeta ./runtime/layout ./runtime/symbols \
	./runtime/unwind ./runtime/proc ./rpmbuild/rpmfile ./rpmbuild/patchrpm ./helper/state ./helper/repo \
	./helper/dirwatch ./helper/journal ./internal/termline ./tests/testenv

test-unit: ## the unit tests that need no root (the RPM's %check)
	$(GO) test -count=1 $(UNIT_PKGS)

man: build ## regenerate docs/man from the programs' --help (a test fails when they drift)
	$(GO) run ./docs/mangen -bin $(BIN) -o docs/man -version $(VERSION)

# Packaging: the source tarball (the files git knows, from the working tree), the vendored
# modules for an offline build, the source RPM and the RPMs. RPMBUILD_FLAGS adds options
# (tests/rpmpkg passes --nodeps and a macros file on Debian).
VERSION := $(shell sed -n 's/^Version: *//p' syscare.spec)
DIST    := $(BIN)/dist
RPMDIR  := $(BIN)/rpm
RPMBUILD = rpmbuild $(RPMBUILD_FLAGS) --define '_sourcedir $(abspath $(DIST))' \
	--define '_srcrpmdir $(abspath $(RPMDIR))' --define '_rpmdir $(abspath $(RPMDIR))' \
	--define '_builddir $(abspath $(RPMDIR))/build' --define '_buildrootdir $(abspath $(RPMDIR))/buildroot'

dist: ## source and vendor tarballs for the spec, in bin/dist
	@rm -rf $(DIST) && mkdir -p $(DIST)/vendor-tree
	git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$$f" ] && printf '%s\0' "$$f"; done | \
		tar --null -T - --transform 's,^,syscare-$(VERSION)/,' --owner=0 --group=0 -czf $(DIST)/syscare-$(VERSION).tar.gz
	$(GO) mod vendor -o $(DIST)/vendor-tree/vendor
	tar -C $(DIST)/vendor-tree --owner=0 --group=0 -czf $(DIST)/syscare-$(VERSION)-vendor.tar.gz vendor
	rm -rf $(DIST)/vendor-tree

srpm: dist ## the source RPM, in bin/rpm
	@mkdir -p $(RPMDIR)
	$(RPMBUILD) -bs syscare.spec

rpm: dist ## the binary and source RPMs (rpmbuild -ba), in bin/rpm
	@mkdir -p $(RPMDIR)/build
	$(RPMBUILD) -ba syscare.spec

demo: check-deps build ## hot-patch a running program end to end
	tests/demo.sh

bench: check-deps build ## run the benchmarks and print figures
	SYSCARE_E2E=1 $(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./... | grep -Ev '^(ok|PASS|\?)'

soak: check-deps build ## kill upatch-manage (SOAK_TRIALS, 500) and the helper (SOAK_HELPER_TRIALS, 100) at random instants, print the counts
	@mkdir -p $(BIN)
	@SYSCARE_SOAK_TRIALS=$(or $(SOAK_TRIALS),500) SYSCARE_SOAK_HELPER_TRIALS=$(or $(SOAK_HELPER_TRIALS),100) \
		SYSCARE_SOAK_LOAD=$(or $(SOAK_LOAD),0) \
		$(GO) test -v -count=1 -timeout 60m -run 'KillCampaign' ./runtime/upatch/ ./helper/e2e/ >$(BIN)/soak.log 2>&1; rc=$$?; \
		grep -E '^(campaign|---|FAIL|ok)|trial' $(BIN)/soak.log; exit $$rc

lint: ## gofmt, go vet, staticcheck, go mod tidy, python syntax
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	@if ls dnf-plugin/*.py >/dev/null 2>&1; then $(PYTHON) -m py_compile dnf-plugin/*.py ansible/plugins/modules/*.py; fi

clean: ## remove build output
	rm -rf $(BIN)

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## /  \1\t/' | expand -t 14
