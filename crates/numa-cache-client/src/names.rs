//! The names of the public contract: bus name, object paths, interfaces, error names and
//! polkit actions. The daemon and every client use these constants, so a misspelling is a
//! compile error rather than a call that fails at run time.
//!
//! ```
//! use numa_cache_client::names;
//! assert_eq!(names::node_path(3), "/org/opdbus/NumaCache/node3");
//! assert_eq!(
//!     names::ErrorKind::from_name("org.opdbus.NumaCache.Error.NotFound"),
//!     Some(names::ErrorKind::NotFound)
//! );
//! ```

/// The well-known bus name the daemon owns on the system bus.
pub const BUS_NAME: &str = "org.opdbus.NumaCache";

/// The root object: Topology, Strategy, CacheStats, Cache and the ObjectManager.
pub const ROOT_PATH: &str = "/org/opdbus/NumaCache";

/// The prefix of a node's child object path; the node id follows (`node_path`).
pub const NODE_PATH_PREFIX: &str = "/org/opdbus/NumaCache/node";

/// The object path of node `id`'s child object, e.g. `/org/opdbus/NumaCache/node0`.
///
/// ```
/// assert_eq!(numa_cache_client::names::node_path(0), "/org/opdbus/NumaCache/node0");
/// ```
pub fn node_path(id: u32) -> String {
    format!("{NODE_PATH_PREFIX}{id}")
}

/// The node id of a child object path, or `None` for any other path.
///
/// ```
/// use numa_cache_client::names::node_of_path;
/// assert_eq!(node_of_path("/org/opdbus/NumaCache/node12"), Some(12));
/// assert_eq!(node_of_path("/org/opdbus/NumaCache"), None);
/// ```
pub fn node_of_path(path: &str) -> Option<u32> {
    let digits = path.strip_prefix(NODE_PATH_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Interface names.
pub mod iface {
    /// `org.opdbus.NumaCache.Topology` (root object).
    pub const TOPOLOGY: &str = "org.opdbus.NumaCache.Topology";
    /// `org.opdbus.NumaCache.Strategy` (root object).
    pub const STRATEGY: &str = "org.opdbus.NumaCache.Strategy";
    /// `org.opdbus.NumaCache.CacheStats` (root object).
    pub const CACHE_STATS: &str = "org.opdbus.NumaCache.CacheStats";
    /// `org.opdbus.NumaCache.Cache` (root object): the data plane.
    pub const CACHE: &str = "org.opdbus.NumaCache.Cache";
    /// `org.opdbus.NumaCache.Node` (one child object per NUMA node).
    pub const NODE: &str = "org.opdbus.NumaCache.Node";
    /// `org.freedesktop.DBus.ObjectManager` (root object).
    pub const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
    /// `org.freedesktop.DBus.Properties`.
    pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
}

/// The prefix of the daemon's own error names.
pub const ERROR_PREFIX: &str = "org.opdbus.NumaCache.Error";

/// Error names.
pub mod error {
    /// No such entry, snapshot or process.
    pub const NOT_FOUND: &str = "org.opdbus.NumaCache.Error.NotFound";
    /// An argument is malformed or out of range.
    pub const INVALID_ARGUMENT: &str = "org.opdbus.NumaCache.Error.InvalidArgument";
    /// A value (or a batch) is over a size limit.
    pub const TOO_LARGE: &str = "org.opdbus.NumaCache.Error.TooLarge";
    /// The cache cannot make room.
    pub const NO_SPACE: &str = "org.opdbus.NumaCache.Error.NoSpace";
    /// Stored data failed its checksum.
    pub const CORRUPTED: &str = "org.opdbus.NumaCache.Error.Corrupted";
    /// The service cannot do it now.
    pub const UNAVAILABLE: &str = "org.opdbus.NumaCache.Error.Unavailable";
    /// polkit, the bus policy or namespace ownership said no.
    pub const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
    /// polkit wants to ask the user, and the call did not allow interaction.
    pub const INTERACTIVE_AUTHORIZATION_REQUIRED: &str =
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired";
    /// Nothing owns the bus name (the daemon is not running).
    pub const SERVICE_UNKNOWN: &str = "org.freedesktop.DBus.Error.ServiceUnknown";
    /// Nothing owns the bus name (reported by some calls instead of ServiceUnknown).
    pub const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
    /// A call got no reply in time.
    pub const NO_REPLY: &str = "org.freedesktop.DBus.Error.NoReply";
    /// The arguments did not have the member's signature.
    pub const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
    /// The object has no such method.
    pub const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
    /// The object does not exist (for example a node that went away).
    pub const UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";
    /// The interface does not exist on the object.
    pub const UNKNOWN_INTERFACE: &str = "org.freedesktop.DBus.Error.UnknownInterface";
    /// The property does not exist on the interface.
    pub const UNKNOWN_PROPERTY: &str = "org.freedesktop.DBus.Error.UnknownProperty";
    /// The daemon hit the bus's resource limits.
    pub const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
}

/// Every error name of the contract, as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`error::NOT_FOUND`]
    NotFound,
    /// [`error::INVALID_ARGUMENT`]
    InvalidArgument,
    /// [`error::TOO_LARGE`]
    TooLarge,
    /// [`error::NO_SPACE`]
    NoSpace,
    /// [`error::CORRUPTED`]
    Corrupted,
    /// [`error::UNAVAILABLE`]
    Unavailable,
    /// [`error::ACCESS_DENIED`]
    AccessDenied,
    /// [`error::INTERACTIVE_AUTHORIZATION_REQUIRED`]
    InteractiveAuthorizationRequired,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::NotFound,
        ErrorKind::InvalidArgument,
        ErrorKind::TooLarge,
        ErrorKind::NoSpace,
        ErrorKind::Corrupted,
        ErrorKind::Unavailable,
        ErrorKind::AccessDenied,
        ErrorKind::InteractiveAuthorizationRequired,
    ];

    /// The D-Bus error name.
    ///
    /// ```
    /// use numa_cache_client::names::ErrorKind;
    /// assert_eq!(ErrorKind::TooLarge.name(), "org.opdbus.NumaCache.Error.TooLarge");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => error::NOT_FOUND,
            ErrorKind::InvalidArgument => error::INVALID_ARGUMENT,
            ErrorKind::TooLarge => error::TOO_LARGE,
            ErrorKind::NoSpace => error::NO_SPACE,
            ErrorKind::Corrupted => error::CORRUPTED,
            ErrorKind::Unavailable => error::UNAVAILABLE,
            ErrorKind::AccessDenied => error::ACCESS_DENIED,
            ErrorKind::InteractiveAuthorizationRequired => {
                error::INTERACTIVE_AUTHORIZATION_REQUIRED
            }
        }
    }

    /// The kind of a D-Bus error name, `None` for a name outside the contract.
    ///
    /// ```
    /// use numa_cache_client::names::ErrorKind;
    /// assert_eq!(ErrorKind::from_name("org.example.Other"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// polkit action ids (polkit/org.opdbus.NumaCache.policy).
pub mod action {
    /// `SetStrategy`.
    pub const SET_STRATEGY: &str = "org.opdbus.NumaCache.set-strategy";
    /// `Optimize`.
    pub const OPTIMIZE: &str = "org.opdbus.NumaCache.optimize";
    /// `BindProcess`.
    pub const BIND_PROCESS: &str = "org.opdbus.NumaCache.bind-process";
    /// `Clear`, snapshots and `ResetCounters`.
    pub const MANAGE_CACHE: &str = "org.opdbus.NumaCache.manage-cache";
}

/// The group whose members may use the Cache interface (dbus/org.opdbus.NumaCache.conf).
pub const CACHE_GROUP: &str = "numacache";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_round_trips_through_its_name() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
        }
        let ours = ErrorKind::ALL
            .iter()
            .filter(|k| k.name().starts_with(ERROR_PREFIX))
            .count();
        assert_eq!(ours, 6, "six org.opdbus.NumaCache.Error names");
    }

    #[test]
    fn node_paths_parse_back_and_reject_lookalikes() {
        assert_eq!(node_of_path(&node_path(4_000_000_000)), Some(4_000_000_000));
        for bad in [
            "/org/opdbus/NumaCache/node",
            "/org/opdbus/NumaCache/node-1",
            "/org/opdbus/NumaCache/node1/x",
            "/org/opdbus/NumaCache/node99999999999",
        ] {
            assert_eq!(node_of_path(bad), None, "{bad}");
        }
    }
}
