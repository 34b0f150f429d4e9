//! Syscalls that place threads and memory: affinity, memory policy, page migration and
//! queries, and the capability checks in front of them. Everything here is a raw syscall
//! through `libc::syscall`; nothing spawns `numactl` or `taskset`.

mod affinity;
mod error;
pub mod flock;
mod mask;
pub mod memfd;
mod mempolicy;
mod pages;
mod privilege;
pub mod scm;
pub mod sockq;
mod uevent;

pub use affinity::{
    current_tid, get_affinity, getcpu, possible_cpu_bits, set_affinity, set_process_affinity,
    task_ids,
};
pub use error::PolicyError;
pub use error::{CAP_SYS_NICE, id_list};
pub use mask::Bitmask;
pub use mempolicy::{
    MemPolicyMode, MoveFlags, get_mempolicy, mbind, mems_allowed, set_mempolicy, supported,
};
pub use pages::{AnonPages, migrate_pages, move_pages_to, page_nodes, process_pages_per_node};
pub use privilege::{check_other_process, has_sys_nice};
pub use uevent::{Uevent, UeventSocket};
