//! Placement: which node a new entry goes to, and the per-node worker pools that serve it.

pub mod pool;
pub mod strategy;

pub use pool::NodePools;
pub use strategy::{MemoryPolicy, Strategy, StrategyConfig, UnknownName};
