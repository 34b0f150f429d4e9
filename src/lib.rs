//! numa-cache: a NUMA-aware blob cache for operation-dbus components.
//!
//! The engine (topology, policy, placement, store) knows nothing of D-Bus; `service/` is the
//! thin zbus adapter used by the `numa-cached` daemon, and `cli/` holds what `numacachectl`
//! renders or runs locally.

pub mod cli;
pub mod gateway;
pub mod placement;
pub mod policy;
pub mod service;
pub mod store;
pub mod topology;
