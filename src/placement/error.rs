//! Errors of placement decisions and of acting on other processes.

use crate::policy::PolicyError;

/// A placement request could not be honoured.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The node does not exist, is outside the cpuset, or has no memory.
    #[error("node {node} cannot hold data: {reason} (usable nodes: {usable})")]
    NodeNotUsable {
        /// The node asked for.
        node: i64,
        /// Why it cannot be used.
        reason: &'static str,
        /// The allowed nodes with memory, as a list.
        usable: String,
    },
    /// The node has no CPU this process may run on, and no other node can stand in.
    #[error("node {node} has no CPU this process may use, and no node with CPUs is allowed")]
    NoCpus {
        /// The node asked for.
        node: u32,
    },
    /// A syscall failed (no such pid, a missing capability, ...).
    #[error(transparent)]
    Policy(#[from] PolicyError),
}
