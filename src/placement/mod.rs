//! Placement: which node a new entry goes to, the per-node worker pools that serve it, and
//! the engine calls behind `BindProcess` and `Optimize`.

mod bind;
mod error;
mod nodes;
mod placer;
pub mod pool;
pub mod strategy;

pub use bind::{BindReport, bind_process, optimize_plan};
pub use error::PlacementError;
pub use placer::Placer;
pub use pool::NodePools;
pub use strategy::{
    MemoryPolicy, Strategy, StrategyConfig, UnknownName, WorkloadType, optimal_strategy,
};
