# perceus: `make` sets everything up on a fresh Debian 12 machine (run as root);
# `make test`, `make demo` and `make bench` set up first, then run.

SHELL := /bin/bash
.DEFAULT_GOAL := setup

# Debian's interpreter: the same one stage one is frozen from (see DESIGN.md).
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perceus-installed
NATIVE_SOURCES := $(wildcard native/*.pyx native/*.pxd native/*_build.py native/csrc/*)

# System packages the build, the tests and the demo need.
APT_PACKAGES := python3 python3-venv python3-dev gcc make libc6-dev \
	openssh-client openssh-server openssl rsync sqlite3 zstd cpio pigz bzip2 tar iproute2 util-linux \
	qemu-system-x86 busybox-static \
	dnsmasq-base pxelinux syslinux-common ipxe ovmf systemd-boot-efi binutils flashrom

# Benchmark peers only (make bench): installed without starting their services.
BENCH_APT_PACKAGES := nginx-light

# Debian's kernel for QEMU tests, unpacked here rather than installed on the master.
KERNEL_DIR := .cache/debian-kernel
KERNEL_STAMP := $(KERNEL_DIR)/.unpacked

.PHONY: setup apt apt-bench kernel test test-fast demo bench lint clean

setup: $(STAMP) $(KERNEL_STAMP)

kernel: $(KERNEL_STAMP)

apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

apt-bench: apt
	@missing=""; \
	for p in $(BENCH_APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make: installing$$missing (services not started)"; \
		guard=""; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1; }; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		status=$$?; [ -z "$$guard" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
	fi

$(KERNEL_STAMP): | apt
	rm -rf $(KERNEL_DIR) && mkdir -p $(KERNEL_DIR)
	cd $(KERNEL_DIR) && pkg=$$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $$2; exit}') \
		&& (apt-get download $$pkg 2>/dev/null || (apt-get update -q && apt-get download $$pkg)) \
		&& dpkg-deb -x $$pkg*.deb root && rm -f $$pkg*.deb
	ln -sfn $$(cd $(KERNEL_DIR)/root/boot && ls vmlinuz-* | head -1) $(KERNEL_DIR)/root/boot/vmlinuz
	touch $@

$(STAMP): setup.py pyproject.toml $(NATIVE_SOURCES) | apt
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "setuptools>=68" wheel "Cython>=3.0" "cffi>=1.16"
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@

test: lint $(KERNEL_STAMP)
	$(PY) -m pytest -q tests

# The inner loop: no network namespaces, no QEMU and none of the long runs, on two workers;
# run by another user than root, none of the tests that need root (pytest.ini) either.
FAST_MARKS = not netns and not qemu and not slow$(if $(filter 0,$(shell id -u)),, and not root)

test-fast: $(STAMP) $(KERNEL_STAMP)
	$(PY) -m pytest -q -n 2 -m "$(FAST_MARKS)" tests

demo: $(STAMP) $(KERNEL_STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) tests/e2e/demo.py

bench: $(STAMP) $(KERNEL_STAMP) apt-bench
	$(PY) -m pytest -q bench --benchmark-columns=min,median,max --benchmark-sort=name

# Style, then the room rules (.importlinter).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .cache build *.egg-info native/*.c native/*.so .pytest_cache .benchmarks .import_linter_cache
