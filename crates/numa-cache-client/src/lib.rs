//! Client for `numa-cached`, the NUMA-aware blob cache of operation-dbus
//! (`org.opdbus.NumaCache` on the D-Bus system bus).
//!
//! [`names`] holds the bus name, object paths, interface names, error names and polkit
//! action ids of the public contract (ARCHITECTURE.md); the daemon uses the same module, so
//! the two sides cannot drift apart.

pub mod names;
