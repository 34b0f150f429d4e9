//! Syscalls that place threads and memory: affinity, memory policy, page migration and
//! queries, and the capability checks in front of them.
