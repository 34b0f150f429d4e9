# Build and install numa-cache. `make && sudo make install` puts every file where a
# distribution would; packagers use DESTDIR (staging root) and PREFIX (default /usr).
# Installed to the running system (no DESTDIR), it creates the group numacache with
# systemd-sysusers BEFORE the bus policy that names it lands (a bus that reads a policy naming
# an unknown group ignores that rule until it reloads), then reloads systemd and the bus.
# Afterwards: `sudo systemctl enable --now numa-cached` (bus activation works without it).
# `make deb` builds the Debian package (debian/) into ../numa-cache_*.deb.

PREFIX        ?= /usr
DESTDIR       ?=
BINDIR        ?= $(PREFIX)/bin
DATADIR       ?= $(PREFIX)/share
LIBDIR_SD     ?= $(PREFIX)/lib
UNITDIR       ?= $(LIBDIR_SD)/systemd/system
SYSUSERSDIR   ?= $(LIBDIR_SD)/sysusers.d
TMPFILESDIR   ?= $(LIBDIR_SD)/tmpfiles.d
DBUSPOLICYDIR ?= $(DATADIR)/dbus-1/system.d
DBUSSERVDIR   ?= $(DATADIR)/dbus-1/system-services
DBUSIFACEDIR  ?= $(DATADIR)/dbus-1/interfaces
POLKITDIR     ?= $(DATADIR)/polkit-1/actions
DOCDIR        ?= $(DATADIR)/doc/numa-cache
CARGO         ?= cargo
CARGO_FLAGS   ?=
TARGET_DIR    ?= target/release
# numacachectl is built as README and BENCHMARKS describe it: the `cli` profile (LTO, no
# unwinding, stripped), without the daemon's `server` feature, statically linked and not
# position-independent (no dynamic loader, no relocations at start). RUSTFLAGS with an
# explicit --target apply to the binary only, not to build scripts and proc-macros.
# `make CLI_RUSTFLAGS=` builds it dynamically linked instead.
CLI_TARGET    ?= $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
CLI_RUSTFLAGS ?= -C target-feature=+crt-static -C relocation-model=static
CLI_BIN       ?= target/$(CLI_TARGET)/cli/numacachectl

.PHONY: all build install uninstall check deb

all: build

build:
	$(CARGO) build $(CARGO_FLAGS) --release --bin numa-cached
	RUSTFLAGS="$(CLI_RUSTFLAGS)" $(CARGO) build $(CARGO_FLAGS) --profile cli \
	    --no-default-features --bin numacachectl --target $(CLI_TARGET)

install: build
	install -Dm0755 $(TARGET_DIR)/numa-cached       $(DESTDIR)$(BINDIR)/numa-cached
	install -Dm0755 $(CLI_BIN)                      $(DESTDIR)$(BINDIR)/numacachectl
	install -Dm0644 systemd/numa-cache.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/numa-cache.conf
	install -Dm0644 systemd/numa-cache.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/numa-cache.conf
	@# The group first, then the bus policy naming it (only when installing to this system).
	if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then \
	    systemd-sysusers $(SYSUSERSDIR)/numa-cache.conf && \
	    systemd-tmpfiles --create $(TMPFILESDIR)/numa-cache.conf; fi
	install -Dm0644 dbus/org.opdbus.NumaCache.conf  $(DESTDIR)$(DBUSPOLICYDIR)/org.opdbus.NumaCache.conf
	install -Dm0644 dbus/org.opdbus.NumaCache.xml   $(DESTDIR)$(DBUSIFACEDIR)/org.opdbus.NumaCache.xml
	install -d $(DESTDIR)$(DBUSSERVDIR) $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/|$(BINDIR)/|g' dbus/org.opdbus.NumaCache.service > $(DESTDIR)$(DBUSSERVDIR)/org.opdbus.NumaCache.service
	sed 's|/usr/bin/|$(BINDIR)/|g' systemd/numa-cached.service > $(DESTDIR)$(UNITDIR)/numa-cached.service
	chmod 0644 $(DESTDIR)$(DBUSSERVDIR)/org.opdbus.NumaCache.service $(DESTDIR)$(UNITDIR)/numa-cached.service
	install -Dm0644 polkit/org.opdbus.NumaCache.policy $(DESTDIR)$(POLKITDIR)/org.opdbus.NumaCache.policy
	install -Dm0644 polkit/org.opdbus.NumaCache.rules.example $(DESTDIR)$(DOCDIR)/org.opdbus.NumaCache.rules.example
	install -Dm0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -Dm0644 ARCHITECTURE.md $(DESTDIR)$(DOCDIR)/ARCHITECTURE.md
	@# A running systemd and bus pick up the unit, the activation file and the policy now.
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	    systemctl daemon-reload; \
	    busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true; fi

# The Debian package (debian/, debhelper), moved to target/debian/numa-cache_<version>_<arch>.deb
# (dpkg-buildpackage writes to ..). Needs debhelper and cargo on PATH; then
# `lintian target/debian/numa-cache_*.deb` and `sudo apt install ./target/debian/numa-cache_*.deb`.
DEB_VERSION := $(shell dpkg-parsechangelog -S Version 2>/dev/null)
deb:
	dpkg-buildpackage -us -uc -b
	mkdir -p target/debian
	mv ../numa-cache_$(DEB_VERSION)_*.deb ../numa-cache-dbgsym_$(DEB_VERSION)_*.deb \
	   ../numa-cache_$(DEB_VERSION)_*.buildinfo ../numa-cache_$(DEB_VERSION)_*.changes target/debian/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/numa-cached $(DESTDIR)$(BINDIR)/numacachectl \
	      $(DESTDIR)$(DBUSPOLICYDIR)/org.opdbus.NumaCache.conf \
	      $(DESTDIR)$(DBUSIFACEDIR)/org.opdbus.NumaCache.xml \
	      $(DESTDIR)$(DBUSSERVDIR)/org.opdbus.NumaCache.service \
	      $(DESTDIR)$(UNITDIR)/numa-cached.service \
	      $(DESTDIR)$(SYSUSERSDIR)/numa-cache.conf \
	      $(DESTDIR)$(TMPFILESDIR)/numa-cache.conf \
	      $(DESTDIR)$(POLKITDIR)/org.opdbus.NumaCache.policy
	rm -rf $(DESTDIR)$(DOCDIR)

# The unit's hardening score (must stay "OK" or better).
check:
	systemd-analyze security --offline=yes systemd/numa-cached.service
