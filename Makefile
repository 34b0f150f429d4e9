# Build and install numa-cache. `make && sudo make install` puts every file where a
# distribution would; packagers use DESTDIR (staging root) and PREFIX (default /usr).
# Afterwards: `sudo systemd-sysusers && sudo systemctl daemon-reload &&
# sudo systemctl reload dbus && sudo systemctl enable --now numa-cached`.

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
TARGET_DIR    ?= target/release

.PHONY: all build install uninstall check

all: build

build:
	$(CARGO) build --release --bins

install: build
	install -Dm0755 $(TARGET_DIR)/numa-cached       $(DESTDIR)$(BINDIR)/numa-cached
	install -Dm0755 $(TARGET_DIR)/numacachectl      $(DESTDIR)$(BINDIR)/numacachectl
	install -Dm0644 dbus/org.opdbus.NumaCache.conf  $(DESTDIR)$(DBUSPOLICYDIR)/org.opdbus.NumaCache.conf
	install -Dm0644 dbus/org.opdbus.NumaCache.xml   $(DESTDIR)$(DBUSIFACEDIR)/org.opdbus.NumaCache.xml
	install -d $(DESTDIR)$(DBUSSERVDIR) $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/|$(BINDIR)/|g' dbus/org.opdbus.NumaCache.service > $(DESTDIR)$(DBUSSERVDIR)/org.opdbus.NumaCache.service
	sed 's|/usr/bin/|$(BINDIR)/|g' systemd/numa-cached.service > $(DESTDIR)$(UNITDIR)/numa-cached.service
	chmod 0644 $(DESTDIR)$(DBUSSERVDIR)/org.opdbus.NumaCache.service $(DESTDIR)$(UNITDIR)/numa-cached.service
	install -Dm0644 systemd/numa-cache.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/numa-cache.conf
	install -Dm0644 systemd/numa-cache.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/numa-cache.conf
	install -Dm0644 polkit/org.opdbus.NumaCache.policy $(DESTDIR)$(POLKITDIR)/org.opdbus.NumaCache.policy
	install -Dm0644 polkit/org.opdbus.NumaCache.rules.example $(DESTDIR)$(DOCDIR)/org.opdbus.NumaCache.rules.example
	install -Dm0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -Dm0644 ARCHITECTURE.md $(DESTDIR)$(DOCDIR)/ARCHITECTURE.md

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
