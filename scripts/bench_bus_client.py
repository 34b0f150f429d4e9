#!/usr/bin/python3
"""One client process of scripts/bench-bus-throughput.sh: its own connection to the bus,
calling one method in a loop for a fixed time, printing how many calls completed.

Usage: bench_bus_client.py ADDRESS MODE SECONDS WORKER_ID
MODE: ping | get | put | put-sync | floor
floor: the same 4 KiB Put with an option the daemon does not know, refused (InvalidArgument)
right after it parsed the options: what the bus, zbus and the call's unpacking cost a Put,
with no store work (the ceiling a Put can reach; each call counts only when the refusal is
InvalidArgument, so a daemon that stored it would show as an error, not as a rate).
dbus-python (Debian's python3-dbus) is a client we did not write.
"""
import os
import sys
import time

import dbus

NAME = "org.opdbus.NumaCache"
OBJ = "/org/opdbus/NumaCache"
CACHE = "org.opdbus.NumaCache.Cache"


def main():
    address, mode, seconds, wid = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    bus = dbus.bus.BusConnection(address)
    value = dbus.ByteArray(os.urandom(4096))
    call = bus.call_blocking
    n = 0
    if mode == "ping":
        def one(i):
            call(NAME, OBJ, "org.freedesktop.DBus.Peer", "Ping", "", ())
    elif mode == "get":
        keys = [f"k{j}" for j in range(1000)]

        def one(i):
            call(NAME, OBJ, CACHE, "Get", "ss", ("bench", keys[(i * 7919 + wid) % 1000]),
                 byte_arrays=True)
    elif mode in ("put", "put-sync"):
        opts = {"sync": dbus.Boolean(True, variant_level=1)} if mode == "put-sync" else {}

        def one(i):
            call(NAME, OBJ, CACHE, "Put", "ssaya{sv}", ("bench", f"w{wid}-{i}", value, opts))
    elif mode == "floor":
        opts = {"bench-floor-refuse-me": dbus.Boolean(True, variant_level=1)}
        exc = dbus.exceptions.DBusException

        def one(i):
            try:
                call(NAME, OBJ, CACHE, "Put", "ssaya{sv}", ("bench", f"f{wid}-{i}", value, opts))
            except exc as e:
                if e.get_dbus_name() != "org.opdbus.NumaCache.Error.InvalidArgument":
                    raise
            else:
                sys.exit("floor: the daemon accepted an unknown Put option")
    elif mode == "seed":
        for j in range(1000):
            call(NAME, OBJ, CACHE, "Put", "ssaya{sv}", ("bench", f"k{j}", value, {}))
        print(1000)
        return
    else:
        sys.exit(f"unknown mode {mode}")
    # a short warm-up so connection setup is not counted
    try:
        for i in range(20):
            one(i)
    except dbus.exceptions.DBusException as e:
        # a daemon without the `sync` option (before storage v2): report no rate
        print(0)
        print(f"{mode}: {e.get_dbus_name()}", file=sys.stderr)
        return
    end = time.monotonic() + seconds
    i = 20
    while time.monotonic() < end:
        one(i)
        i += 1
        n += 1
    print(n)


if __name__ == "__main__":
    main()
