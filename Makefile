# wasmpod: one release profile for everything (wasmtime is slow to compile and
# slow to run unoptimised), so `target/release` stays warm across targets.
CARGO ?= cargo
CARGO_FLAGS ?= --release
GUEST_TARGETS := --target wasm32-wasip1 --target wasm32-wasip2

.PHONY: all setup build guests test chart image image-push e2e e2e-1.7 e2e-2.1 demo bench lint fuzz ci clean

all: build

## setup: install what a fresh Debian machine needs (idempotent; root)
setup:
	bash .ci/setup

## build: the shim, the wasmpod CLI and the test harness
build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

## guests: Wasm test programs (modules and components) from e2e/guests
guests:
	$(CARGO) build --release $(GUEST_TARGETS) --manifest-path e2e/guests/Cargo.toml --target-dir target/guests

## test: unit tests (no containerd needed); as root also the ones that need it
test:
	$(CARGO) test $(CARGO_FLAGS) --workspace --exclude wasmpod-e2e -- $(if $(filter 0,$(shell id -u)),--include-ignored)

## chart: Helm's real lint of charts/wasmpod, and its rendered manifests validated (Python, helm-sdkpy)
chart: build
	bash charts/test/run

## image: the node installer image (wasmpod-node + the shim) as an importable OCI tar
IMAGE ?= ghcr.io/wasmpod/wasmpod-node:0.1.0
image: build
	target/release/wasmpod-node-image --installer target/release/wasmpod-node \
	  --shim target/release/containerd-shim-wasmpod-v1 --reference $(IMAGE) --out target/image/wasmpod-node.tar

## image-push: push it (IMAGE=registry/repo:tag; credentials from ~/.docker/config.json)
image-push: image
	target/release/wasmpod oci push target/image/wasmpod-node.tar $(IMAGE)

## e2e: end-to-end tests against a private, real containerd (root)
e2e: build guests
	$(CARGO) test $(CARGO_FLAGS) -p wasmpod-e2e -- --test-threads=2

## e2e-1.7: the same tests against containerd 1.7 (Debian trixie's package, fetched into target/, not installed)
e2e-1.7: build guests
	WASMPOD_E2E_CONTAINERD_DIR="$$(e2e/containerd-debian/fetch 1.7)" $(CARGO) test $(CARGO_FLAGS) -p wasmpod-e2e --test e2e -- --test-threads=2

## e2e-2.1: the same tests against containerd 2.1 (Debian sid's package, fetched into target/, not installed)
e2e-2.1: build guests
	WASMPOD_E2E_CONTAINERD_DIR="$$(e2e/containerd-debian/fetch 2.1)" $(CARGO) test $(CARGO_FLAGS) -p wasmpod-e2e --test e2e -- --test-threads=2

## demo: start a private containerd, run the hello-world Wasm container, print its output
demo: build guests
	$(CARGO) run $(CARGO_FLAGS) -q -p wasmpod-e2e --bin wasmpod-demo

## bench: B1 start-up, B2 density, B3 throughput, B4 compute, side by side with runc on a private containerd (Markdown tables + target/bench/results.json)
bench: build guests
	$(CARGO) run $(CARGO_FLAGS) -q -p wasmpod-e2e --bin wasmpod-bench

## lint: formatting, clippy with warnings as errors, and the offline dependency audit
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings
	bash .ci/audit

## fuzz: cargo-fuzz targets (spec -> plan, manifests, containerd config), FUZZ_SECONDS each (default 45)
fuzz:
	bash oci/fuzz/run

## ci: everything CI runs
ci: lint test chart fuzz e2e e2e-1.7 e2e-2.1

clean:
	$(CARGO) clean
