//! What `numacachectl` renders or runs without a daemon.

pub mod diagnose;
pub mod topology;
