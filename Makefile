# invisor: `make demo` runs a real chain that upgrades itself; `make test` runs every test.
GO      ?= go
BUILD   ?= build
PKG     := ./example-app/cmd/exampled
MOD     := github.com/invisor/invisor
SDKV    := github.com/cosmos/cosmos-sdk/version
# One source, three builds: only the link-time upgrade level and version differ.
# $(1) is the upgrade level; $(2), if given, the version (default v<level>.0.0);
# $(3) more -X flags. Stripped (-s -w) as chains release them: 120 MB instead of
# 170, and each link takes about 16 s instead of 25 here.
ldflags = -s -w -X $(SDKV).Name=example -X $(SDKV).AppName=exampled -X $(SDKV).Version=$(if $(2),$(2),v$(1).0.0) \
          -X $(MOD)/example-app/app.UpgradeLevel=$(1) $(3)

.PHONY: build demo testnet test test-unit test-fuzz test-e2e bench clean FORCE

# cosmovisor v1.5.0 from the module proxy (pinned in bench/cosmovisor/go.mod), for
# the end-to-end test of a home it laid out.
$(BUILD)/cosmovisor: bench/cosmovisor/go.mod bench/cosmovisor/go.sum
	@mkdir -p $(BUILD)
	cd bench/cosmovisor && $(GO) build -o $(abspath $@) cosmossdk.io/tools/cosmovisor/cmd/cosmovisor

# staticcheck v0.8.2 from the module proxy (pinned by the tool directive in
# tools/go.mod, so the main module's go.mod carries none of its dependencies).
$(BUILD)/staticcheck: tools/go.mod tools/go.sum
	@mkdir -p $(BUILD)
	cd tools && $(GO) build -o $(abspath $@) honnef.co/go/tools/cmd/staticcheck

build: $(BUILD)/exampled-v1 $(BUILD)/exampled-v2 $(BUILD)/exampled-v3 $(BUILD)/exampled-v2.0.1 $(BUILD)/exampled-v2-bad

$(BUILD)/exampled-v%: FORCE
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -ldflags "$(call ldflags,$*)" -o $@ $(PKG)

# A patch release of v2 (same handlers, another version), and a v2 whose upgrade
# handler fails (for the rollback test): relinks of the same source.
$(BUILD)/exampled-v2.0.1: FORCE
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -ldflags "$(call ldflags,2,v2.0.1)" -o $@ $(PKG)

$(BUILD)/exampled-v2-bad: FORCE
	@mkdir -p $(BUILD)
	$(GO) build -trimpath -ldflags "$(call ldflags,2,v2.0.0-bad,-X $(MOD)/example-app/app.FailUpgrade=v2)" -o $@ $(PKG)

demo: $(BUILD)/exampled-v1 $(BUILD)/exampled-v2
	$(GO) run ./example-app/demo -v1 $(BUILD)/exampled-v1 -v2 $(BUILD)/exampled-v2

# Four validators and a full node rehearse two upgrades (v1 -> v2 -> v3) under
# faults, then a late full node syncs from genesis across both (about 3 minutes).
testnet: build
	$(GO) run ./example-app/testnet -build $(BUILD)

# What a chain links from invisor (the libraries, the edge, the CLI) and the example
# chain itself must compile for the other platforms operators run (cgo is off in a
# cross build).
CROSS := . ./cli/... ./hook/... ./internal/... ./staging/... ./relauncher/... $(PKG)

# go vet and staticcheck (over the main module and bench), a cross build of the
# libraries, the edge, the CLI and exampled for darwin/arm64 and linux/arm64, unit
# tests under the race detector (the packages that link the SDK too: the first run
# on a machine builds the SDK instrumented, about 15 CPU-minutes, cached after
# that), the 1 GiB staging memory bound without the race detector (whose shadow
# memory would make the figure meaningless), short fuzz runs (FUZZ, bounded by run counts; minimization bounded to 100
# runs), then the end-to-end tests against real exampled
# processes, their harness (example-app/localnet) under the race detector.
# Fuzz targets as name@package@budget. The budget is a number of runs, not a
# duration: a duration-bounded run that ends while a worker is mid-input fails with
# "context deadline exceeded" though nothing was found (a known race in Go's fuzzing
# coordinator, seen here on FuzzParse and FuzzExtract in clean-clone runs); a run
# count has no deadline to race. Budgets are sized to a few seconds each here.
FUZZ := FuzzDirName@./internal/home/@5000x FuzzParseUpgradeInfo@./internal/home/@100000x \
        FuzzBootUpgradeInfo@./relauncher/@1000x FuzzDecodeMarker@./relauncher/@100000x \
        FuzzParseInfo@./staging/@5000x FuzzPlanName@./staging/@500x FuzzExtract@./staging/@1000x \
        FuzzWalkTar@./staging/@1000x FuzzNameRuleAgrees@.@300x FuzzParse@./internal/probe/@100000x \
        FuzzReadBundle@./cli/@300x FuzzParseManifest@./cli/@2000x FuzzParseBatch@./cli/@5000x \
        FuzzDecodeProposal@./internal/wire/@5000x

test: test-unit test-fuzz test-e2e

test-unit: $(BUILD)/staticcheck
	$(GO) vet ./...
	$(abspath $(BUILD))/staticcheck ./...
	cd bench && $(abspath $(BUILD))/staticcheck ./...
	GOOS=darwin GOARCH=arm64 $(GO) build $(CROSS)
	GOOS=linux GOARCH=arm64 $(GO) build $(CROSS)
	$(GO) test -race -count=1 -timeout 15m ./internal/... ./staging/... ./relauncher/... ./hook/... ./cli/... .
	$(GO) test -count=1 -run '^TestStage1GiBRSS$$' -v ./staging/

test-fuzz:
	@set -e; for t in $(FUZZ); do \
	  name=$${t%%@*}; rest=$${t#*@}; pkg=$${rest%%@*}; n=$${rest#*@}; \
	  echo "$(GO) test -count=1 -run '^$$' -fuzz '^$$name\$$' -fuzztime $$n -fuzzminimizetime 100x $$pkg"; \
	  $(GO) test -count=1 -run '^$$' -fuzz "^$$name\$$" -fuzztime $$n -fuzzminimizetime 100x $$pkg; \
	done

test-e2e: build $(BUILD)/cosmovisor
	EXAMPLED_BUILD=$(abspath $(BUILD)) COSMOVISOR_BIN=$(abspath $(BUILD))/cosmovisor $(GO) test -race -count=1 -timeout 30m -parallel 2 -v ./example-app/...

# Unit benchmarks, then invisor vs cosmovisor v1.5.0 on real chains (about 40 min
# on 2 cores; writes BENCHMARKS.md). Not part of `make test`.
bench: $(BUILD)/exampled-v1 $(BUILD)/exampled-v2
	$(GO) test -run '^$$' -bench . -benchmem ./hook/ ./internal/planwatch/ ./staging/ ./relauncher/ ./internal/home/
	cd bench && $(GO) run . -runs 5 -v1 $(abspath $(BUILD))/exampled-v1 -v2 $(abspath $(BUILD))/exampled-v2

# Scenario 5 alone (issue 14: a webhook receiver that is down never slows block
# production): block intervals over 250 blocks while invisor stages a 1 GiB
# archive, with no webhook and with a receiver that accepts and never answers
# (add refused to -s5-webhooks for a port that refuses); 3 rounds, the order
# rotated each round (about 9 min on 2 cores). Writes only its own section of
# BENCHMARKS.md.
.PHONY: bench-webhook
bench-webhook: $(BUILD)/exampled-v1 $(BUILD)/exampled-v2
	cd bench && $(GO) run . -scenarios 5 -runs 3 -blocks 250 -s5-webhooks none,hang -v1 $(abspath $(BUILD))/exampled-v1 -v2 $(abspath $(BUILD))/exampled-v2

# Scenario 6 alone (issue 16: the number a chain cares about): 4 validators and a
# full node, every node under invisor or every node under cosmovisor v1.5.0, the
# v2 binary in place, backups off; halt -> first block on v2, -> H+1, -> the
# first block signed by all four, each validator's own switch, stragglers.
# RUNS alternating runs per supervisor (default 10); plan height = proposal + 40.
# Writes only its own section of BENCHMARKS.md.
RUNS ?= 10
.PHONY: bench-network
bench-network: $(BUILD)/exampled-v1 $(BUILD)/exampled-v2
	cd bench && $(GO) run . -scenarios 6 -runs $(RUNS) -delay 40 -v1 $(abspath $(BUILD))/exampled-v1 -v2 $(abspath $(BUILD))/exampled-v2

clean:
	rm -rf $(BUILD)

FORCE:
