//! numa-cache: a NUMA-aware blob cache for operation-dbus components.
//!
//! Layers, each importing only those below it:
//! - the engine: `topology` (what the machine is), `policy` (placement syscalls), `placement`
//!   (where data and threads go) and `store` (the cache), which know nothing of transports;
//! - `app`: every use case once (validate, authorize, act, emit), one error type, one polkit
//!   client, the state the front-ends share;
//! - the front-ends over `app`: `service` (D-Bus, and the daemon that assembles both) and
//!   `gateway` (HTTP);
//! - `cli`: what `numacachectl` renders or runs locally.
//!
//! The daemon's stack (store, app, service, gateway) is behind the default `server` feature,
//! so numacachectl builds without SQLite, zstd, axum or tokio's full runtime.

#[cfg(feature = "server")]
pub mod app;
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
