#!/usr/bin/env python3
"""Regenerate dbus/org.opdbus.NumaCache.xml from a running numa-cached (the doc comments in
the Rust code become the XML comments). Needs DBUS_SYSTEM_BUS_ADDRESS pointing at a bus where
the daemon runs, e.g. after `scripts/demo.sh`. tests/dbus_api.rs checks the result."""
import json, re, subprocess, sys

def introspect(path):
    out = subprocess.run(["busctl", "--system", "--json=short", "call", "org.opdbus.NumaCache", path,
                          "org.freedesktop.DBus.Introspectable", "Introspect"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["data"][0]

def blocks(xml):
    return dict((n, b) for b, n in re.findall(r'(  <interface name="(org\.opdbus[^"]+)">.*?\n  </interface>)', xml, re.S))

ids = json.loads(subprocess.run(["busctl", "--system", "--json=short", "get-property", "org.opdbus.NumaCache",
                                 "/org/opdbus/NumaCache", "org.opdbus.NumaCache.Topology", "NodeIds"],
                                check=True, capture_output=True, text=True).stdout)["data"]
found = {**blocks(introspect("/org/opdbus/NumaCache")), **blocks(introspect("/org/opdbus/NumaCache/node%d" % ids[0]))}
docs = {
    "org.opdbus.NumaCache.Topology": "The NUMA topology as the daemon sees it (limited by its cpuset); object /org/opdbus/NumaCache.\n     Anyone may call it.",
    "org.opdbus.NumaCache.Strategy": "The placement strategy; object /org/opdbus/NumaCache. Reads are open; the methods are\n     polkit-gated (set-strategy, optimize, bind-process).",
    "org.opdbus.NumaCache.CacheStats": "Cache statistics; object /org/opdbus/NumaCache. Properties are coalesced: at most one\n     PropertiesChanged a second.",
    "org.opdbus.NumaCache.Cache": "The data plane; object /org/opdbus/NumaCache. For root and group numacache (bus policy).\n     Errors: org.opdbus.NumaCache.Error.{NotFound,InvalidArgument,TooLarge,NoSpace,Corrupted,Unavailable},\n     org.freedesktop.DBus.Error.AccessDenied.",
    "org.opdbus.NumaCache.Node": "One NUMA node; objects /org/opdbus/NumaCache/nodeN (the kernel node number), added and\n     removed with hotplug under the ObjectManager at /org/opdbus/NumaCache.",
}
out = ['<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"',
       ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">',
       '<!-- org.opdbus.NumaCache: the D-Bus API of numa-cached (install to /usr/share/dbus-1/interfaces/).',
       '     Bus name org.opdbus.NumaCache on the system bus. The root object /org/opdbus/NumaCache serves',
       '     Topology, Strategy, CacheStats, Cache and org.freedesktop.DBus.ObjectManager; one child per',
       '     NUMA node serves Node. tests/dbus_api.rs keeps this file equal to the running daemon;',
       '     tests/dbus/regen-xml.py regenerates it. -->',
       '<node>']
for name, doc in docs.items():
    out.append("  <!--\n     %s\n  -->" % doc)
    out.append(found[name])
out.append("</node>")
target = sys.argv[1] if len(sys.argv) > 1 else "dbus/org.opdbus.NumaCache.xml"
open(target, "w").write("\n".join(out) + "\n")
print("wrote", target)
