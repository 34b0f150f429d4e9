//! numa-cache: a NUMA-aware blob cache for operation-dbus components.
//!
//! The engine (topology, policy, placement, store) knows nothing of D-Bus; `service/` is the
//! thin zbus adapter used by the `numa-cached` daemon, and `cli/` holds what `numacachectl`
//! renders or runs locally. The daemon's stack (store, service, gateway) is behind the
//! default `server` feature, so numacachectl builds without it.

pub mod cli;
#[cfg(feature = "server")]
pub mod gateway;
pub mod placement;
pub mod policy;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod store;
pub mod topology;
