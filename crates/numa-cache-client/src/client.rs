//! [`Client`]: one connection to the bus and typed calls for every member of every interface
//! of `org.opdbus.NumaCache`.

use crate::error::{Error, Result};
use crate::memfd;
use crate::names::{self, iface};
use crate::proxies::{CacheProxy, CacheStatsProxy, NodeProxy, StrategyProxy, TopologyProxy};
use crate::types::{
    CacheStatsInfo, Dict, EntryInfo, NodeInfo, PutOptions, StrategyChange, StrategyInfo,
    TopologyInfo, TopologyReport,
};
use serde_bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use zbus::proxy::{CacheProperties, MethodFlags};
use zbus::{Connection, DeserializeDict, OwnedFd, OwnedVariant, Type};

/// What [`Client::get_or_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The value (stored, or put by the lease holder while this caller waited).
    Hit(Vec<u8>),
    /// A miss, and this caller holds the lease: compute the value and put it.
    Fill,
}

/// Values at least this large go by sealed memfd (PutFd) unless the builder says otherwise:
/// past about a MiB, copying through the bus daemon costs more than mapping a file.
pub const DEFAULT_FD_THRESHOLD: usize = 1 << 20;

/// The largest value a client accepts from a GetFd reply unless the builder says otherwise
/// (the daemon's own default limit).
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 256 << 20;

/// How to connect and behave; made by [`Client::builder`].
///
/// ```no_run
/// # async fn demo() -> Result<(), numa_cache_client::Error> {
/// let client = numa_cache_client::Client::builder()
///     .address("unix:path=/run/dbus/system_bus_socket")
///     .fd_threshold(4 << 20)
///     .interactive(true)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ClientBuilder {
    address: Option<String>,
    connection: Option<Connection>,
    fd_threshold: Option<usize>,
    max_value_bytes: Option<u64>,
    interactive: bool,
}

impl ClientBuilder {
    /// Connect to this D-Bus address instead of the system bus.
    ///
    /// ```
    /// let b = numa_cache_client::Client::builder().address("unix:path=/tmp/bus");
    /// # drop(b);
    /// ```
    pub fn address(mut self, address: impl Into<String>) -> ClientBuilder {
        self.address = Some(address.into());
        self
    }

    /// Use a connection the caller already has (a component's own zbus connection).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), numa_cache_client::Error> {
    /// let conn = zbus::Connection::system().await?;
    /// let client = numa_cache_client::Client::builder().connection(conn).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn connection(mut self, connection: Connection) -> ClientBuilder {
        self.connection = Some(connection);
        self
    }

    /// Values of at least `bytes` are sent by memfd (PutFd) instead of inside the message.
    ///
    /// ```
    /// let b = numa_cache_client::Client::builder().fd_threshold(64 << 10);
    /// # drop(b);
    /// ```
    pub fn fd_threshold(mut self, bytes: usize) -> ClientBuilder {
        self.fd_threshold = Some(bytes);
        self
    }

    /// The largest value this client will read from a GetFd reply.
    ///
    /// ```
    /// let b = numa_cache_client::Client::builder().max_value_bytes(1 << 30);
    /// # drop(b);
    /// ```
    pub fn max_value_bytes(mut self, bytes: u64) -> ClientBuilder {
        self.max_value_bytes = Some(bytes);
        self
    }

    /// Let polkit ask the user (a password prompt through their agent) for the admin
    /// methods. Off by default: a service gets `InteractiveAuthorizationRequired` instead.
    ///
    /// ```
    /// let b = numa_cache_client::Client::builder().interactive(true);
    /// # drop(b);
    /// ```
    pub fn interactive(mut self, interactive: bool) -> ClientBuilder {
        self.interactive = interactive;
        self
    }

    /// Connect and make the proxies. Must run inside a tokio runtime (zbus spawns its
    /// connection task there).
    pub async fn build(self) -> Result<Client> {
        let conn = match (self.connection, self.address) {
            (Some(c), _) => c,
            (None, Some(address)) => connect_address(&address).await?,
            (None, None) => Connection::system()
                .await
                .map_err(|source| Error::Connect {
                    address: format!(
                        "the system bus (DBUS_SYSTEM_BUS_ADDRESS={})",
                        std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| "unset".into())
                    ),
                    source,
                })?,
        };
        Client::with_settings(
            conn,
            Settings {
                fd_threshold: self.fd_threshold.unwrap_or(DEFAULT_FD_THRESHOLD),
                max_value_bytes: self.max_value_bytes.unwrap_or(DEFAULT_MAX_VALUE_BYTES),
                interactive: self.interactive,
            },
        )
        .await
    }
}

async fn connect_address(address: &str) -> Result<Connection> {
    let fail = |source| Error::Connect {
        address: address.to_string(),
        source,
    };
    zbus::connection::Builder::address(address)
        .build()
        .await
        .map_err(fail)
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    fd_threshold: usize,
    max_value_bytes: u64,
    interactive: bool,
}

/// A connection to `numa-cached` with typed calls for every member of every interface.
///
/// Cheap to clone (the connection and proxies are shared). Every method needs a tokio
/// runtime; [`crate::blocking::Client`] is the same API for code without one.
///
/// ```no_run
/// use numa_cache_client::{Client, PutOptions};
/// use std::time::Duration;
/// # async fn demo() -> Result<(), numa_cache_client::Error> {
/// let client = Client::system().await?;
/// let node = client
///     .put_with("embeddings", "k1", b"value", PutOptions::new().ttl(Duration::from_secs(3600)))
///     .await?;
/// assert_eq!(client.get("embeddings", "k1").await?.as_deref(), Some(&b"value"[..]));
/// println!("stored on node {node}");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    conn: Connection,
    topology: TopologyProxy<'static>,
    strategy: StrategyProxy<'static>,
    stats: CacheStatsProxy<'static>,
    cache: CacheProxy<'static>,
    settings: Settings,
}

#[derive(DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "PascalCase")]
struct TopologyProps {
    numa_available: bool,
    node_ids: Vec<u32>,
    allowed_cpus: Vec<u32>,
    allowed_nodes: Vec<u32>,
    total_memory_bytes: u64,
    distances: Vec<Vec<u32>>,
    optimal_strategy: String,
    generation: u64,
}

#[derive(DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "PascalCase")]
struct StrategyProps {
    name: String,
    node_preference: i32,
    memory_policy: String,
    workload_type: String,
    affected_processes: u32,
}

#[derive(DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "PascalCase")]
struct StatsProps {
    entries: u64,
    logical_bytes: u64,
    stored_bytes: u64,
    hits: u64,
    misses: u64,
    hit_rate: f64,
    evictions: u64,
    local_hit_ratio: f64,
}

#[derive(DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "PascalCase")]
struct NodeProps {
    id: u32,
    cpus: Vec<u32>,
    has_cpu: bool,
    has_memory: bool,
    memory_total_bytes: u64,
    memory_free_bytes: u64,
    distances: BTreeMap<u32, u32>,
    cache_entries: u64,
    cache_bytes: u64,
    memory_tier_bytes: u64,
    hit_rate: f64,
}

impl Client {
    /// Connect to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set) with default settings.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), numa_cache_client::Error> {
    /// let client = numa_cache_client::Client::system().await?;
    /// # Ok(()) }
    /// ```
    pub async fn system() -> Result<Client> {
        Client::builder().build().await
    }

    /// Connect to the bus at `address` (for example a private test bus) with default settings.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), numa_cache_client::Error> {
    /// let client = numa_cache_client::Client::connect("unix:path=/tmp/test-bus").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(address: &str) -> Result<Client> {
        Client::builder().address(address).build().await
    }

    /// Settings beyond the defaults: address, memfd threshold, interactive authorization.
    ///
    /// ```
    /// let builder = numa_cache_client::Client::builder();
    /// # drop(builder);
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    async fn with_settings(conn: Connection, settings: Settings) -> Result<Client> {
        Ok(Client {
            topology: TopologyProxy::builder(&conn)
                .cache_properties(CacheProperties::No)
                .build()
                .await?,
            strategy: StrategyProxy::builder(&conn)
                .cache_properties(CacheProperties::No)
                .build()
                .await?,
            stats: CacheStatsProxy::builder(&conn)
                .cache_properties(CacheProperties::No)
                .build()
                .await?,
            cache: CacheProxy::builder(&conn)
                .cache_properties(CacheProperties::No)
                .build()
                .await?,
            conn,
            settings,
        })
    }

    /// The underlying zbus connection.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) {
    /// println!("my unique name: {:?}", client.connection().unique_name());
    /// # }
    /// ```
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The raw proxy of `org.opdbus.NumaCache.Topology`.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> zbus::Result<()> {
    /// let ids = client.topology_proxy().node_ids().await?;
    /// # Ok(()) }
    /// ```
    pub fn topology_proxy(&self) -> &TopologyProxy<'static> {
        &self.topology
    }

    /// The raw proxy of `org.opdbus.NumaCache.Strategy`.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> zbus::Result<()> {
    /// let name = client.strategy_proxy().name().await?;
    /// # Ok(()) }
    /// ```
    pub fn strategy_proxy(&self) -> &StrategyProxy<'static> {
        &self.strategy
    }

    /// The raw proxy of `org.opdbus.NumaCache.CacheStats`.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> zbus::Result<()> {
    /// let hits = client.stats_proxy().hits().await?;
    /// # Ok(()) }
    /// ```
    pub fn stats_proxy(&self) -> &CacheStatsProxy<'static> {
        &self.stats
    }

    /// The raw proxy of `org.opdbus.NumaCache.Cache`.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> zbus::Result<()> {
    /// let existed = client.cache_proxy().delete("ns", "k").await?;
    /// # Ok(()) }
    /// ```
    pub fn cache_proxy(&self) -> &CacheProxy<'static> {
        &self.cache
    }

    /// The raw proxy of node `id`'s `org.opdbus.NumaCache.Node` object.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let free = client.node_proxy(0).await?.memory_free_bytes().await?;
    /// # Ok(()) }
    /// ```
    pub async fn node_proxy(&self, id: u32) -> Result<NodeProxy<'static>> {
        Ok(NodeProxy::builder(&self.conn)
            .path(names::node_path(id))
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    fn flags(&self) -> MethodFlags {
        if self.settings.interactive {
            MethodFlags::ALLOW_INTERACTIVE_AUTH
        } else {
            MethodFlags::empty()
        }
    }

    /// An admin call (polkit-gated): with ALLOW_INTERACTIVE_AUTH when the builder said so.
    async fn admin<B, R>(&self, proxy: &zbus::Proxy<'static>, method: &str, body: &B) -> Result<R>
    where
        B: serde::Serialize + zbus::DynamicType,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        proxy
            .call_with_flags(method, self.flags(), body)
            .await?
            .ok_or_else(|| Error::Protocol(format!("{method} returned no reply")))
    }

    async fn get_all<T>(&self, path: &str, interface: &str) -> Result<T>
    where
        T: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(names::BUS_NAME)
            .path(path.to_string())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(props.inner().call("GetAll", &(interface,)).await?)
    }

    // ---- org.opdbus.NumaCache.Cache -------------------------------------------------------

    /// Store `value` under (`namespace`, `key`) with no options; returns the node it was
    /// placed on. Values of at least the memfd threshold go by PutFd.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let node = client.put("workstacks", "step-1", b"output").await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<u32> {
        self.put_with(namespace, key, value, PutOptions::new())
            .await
    }

    /// Store `value` with options (TTL, node, sync); returns the node it was placed on.
    ///
    /// ```no_run
    /// use numa_cache_client::PutOptions;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// client.put_with("ns", "k", b"v", PutOptions::new().node(1).sync(true)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_with(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        options: PutOptions,
    ) -> Result<u32> {
        let dict = options.to_dict()?;
        if value.len() >= self.settings.fd_threshold {
            let fd = memfd::sealed(value)?;
            return Ok(self
                .cache
                .put_fd(namespace, key, zbus::Fd::from(&fd), dict)
                .await?);
        }
        Ok(self
            .cache
            .put(namespace, key, Bytes::new(value), dict)
            .await?)
    }

    /// Store the contents of a sealed memfd the caller made (PutFd), e.g. one filled by
    /// another process. The daemon refuses an unsealed file.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client, fd: std::os::fd::OwnedFd) -> Result<(), numa_cache_client::Error> {
    /// client.put_fd("ns", "big", &fd, Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_fd(
        &self,
        namespace: &str,
        key: &str,
        fd: &impl std::os::fd::AsFd,
        options: PutOptions,
    ) -> Result<u32> {
        let dict = options.to_dict()?;
        Ok(self
            .cache
            .put_fd(namespace, key, zbus::Fd::from(fd.as_fd()), dict)
            .await?)
    }

    /// The value under (`namespace`, `key`), `None` on a miss. A value too large for a
    /// message is fetched again by GetFd, transparently.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// match client.get("ns", "k").await? {
    ///     Some(v) => println!("{} bytes", v.len()),
    ///     None => println!("miss"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        match self.cache.get(namespace, key).await.map_err(Error::from) {
            Ok(v) => Ok(Some(v.into_vec())),
            Err(Error::NotFound(_)) => Ok(None),
            Err(Error::TooLarge(_)) => self.get_fd(namespace, key).await,
            Err(e) => Err(e),
        }
    }

    /// `GetMany`: the values of the keys present, by key (missing keys are absent), in one
    /// round trip. At most 1024 keys and 16 MiB of values per call (else `TooLarge`).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let found = client.get_many("ns", &["a", "b", "c"]).await?;
    /// println!("{} of 3 present", found.len());
    /// # Ok(()) }
    /// ```
    pub async fn get_many(
        &self,
        namespace: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, Vec<u8>>> {
        Ok(self
            .cache
            .get_many(namespace, keys)
            .await?
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect())
    }

    /// `PutMany`: store every `(key, value)` of `entries` in one round trip with no options,
    /// all or nothing; returns how many were stored. At most 1024 entries and 16 MiB of
    /// values per call (else `TooLarge`); the values travel inside the message (no memfd).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let stored = client
    ///     .put_many("ns", &[("a", &b"1"[..]), ("b", &b"2"[..])])
    ///     .await?;
    /// assert_eq!(stored, 2);
    /// # Ok(()) }
    /// ```
    pub async fn put_many(&self, namespace: &str, entries: &[(&str, &[u8])]) -> Result<u32> {
        self.put_many_with(namespace, entries, PutOptions::new())
            .await
    }

    /// `PutMany` with options (TTL, node, sync) for every entry of the batch: all of them
    /// are stored, or none (a namespace that is another user's refuses the whole batch with
    /// `AccessDenied`). A key given twice is refused before anything is sent.
    ///
    /// ```no_run
    /// use numa_cache_client::PutOptions;
    /// use std::time::Duration;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let batch = [("step-1", &b"out1"[..]), ("step-2", &b"out2"[..])];
    /// client
    ///     .put_many_with("workstacks", &batch, PutOptions::new().ttl(Duration::from_secs(60)).sync(true))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_many_with(
        &self,
        namespace: &str,
        entries: &[(&str, &[u8])],
        options: PutOptions,
    ) -> Result<u32> {
        let dict = options.to_dict()?;
        let mut map: HashMap<&str, &Bytes> = HashMap::with_capacity(entries.len());
        for (k, v) in entries {
            if map.insert(k, Bytes::new(v)).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "key {k:?} appears twice in one PutMany: give each key once"
                )));
            }
        }
        Ok(self.cache.put_many(namespace, map, dict).await?)
    }

    /// `OpenDirect`: a client over a peer-to-peer connection to the daemon that skips the
    /// bus daemon (one hop instead of two per call), for many small calls. It offers the
    /// Cache methods (`get`, `put`, `get_many`, `put_many`, `get_or_lease`, `delete`, ...)
    /// as this client's caller; admin methods and the other interfaces answer with an error.
    /// It stays open when this client's bus connection goes, until it is dropped or the
    /// daemon stops. The bus policy decides who may open one; the daemon caps them per user
    /// (16) and overall (`Unavailable` past either).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let direct = client.open_direct().await?;
    /// for i in 0..1000 {
    ///     let _ = direct.get("ns", &format!("k{i}")).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn open_direct(&self) -> Result<Client> {
        let fd: OwnedFd = self.cache.open_direct().await?;
        let stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(fd));
        let conn = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
            .map_err(|source| Error::Connect {
                address: "the socket OpenDirect returned".into(),
                source,
            })?;
        Client::with_settings(conn, self.settings).await
    }

    /// The value through a sealed memfd (GetFd), `None` on a miss.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let big = client.get_fd("ns", "big").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_fd(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (fd, size): (OwnedFd, u64) = match self.cache.get_fd(namespace, key).await {
            Ok(r) => r,
            Err(e) => {
                return match Error::from(e) {
                    Error::NotFound(_) => Ok(None),
                    other => Err(other),
                };
            }
        };
        let fd = std::os::fd::OwnedFd::from(fd);
        memfd::read(fd, size, self.settings.max_value_bytes).map(Some)
    }

    /// `GetOrLease`: the value on a hit, or [`Lease::Fill`] when this caller holds the lease
    /// on a missing key and should compute and put it. Waiting for another caller's fill
    /// happens in the daemon, up to `lease`. A daemon without `GetOrLease` gives a plain
    /// read: the value, or `Fill` on a miss (no single flight).
    ///
    /// ```no_run
    /// use numa_cache_client::Lease;
    /// use std::time::Duration;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// match client.get_or_lease("ns", "k", Duration::from_secs(5)).await? {
    ///     Lease::Hit(v) => println!("{} bytes", v.len()),
    ///     Lease::Fill => { client.put("ns", "k", b"computed").await?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get_or_lease(&self, namespace: &str, key: &str, lease: Duration) -> Result<Lease> {
        let lease_ms = u32::try_from(lease.as_millis()).unwrap_or(u32::MAX);
        match self
            .cache
            .get_or_lease(namespace, key, lease_ms)
            .await
            .map_err(Error::from)
        {
            Ok((true, v)) => Ok(Lease::Hit(v.into_vec())),
            Ok((false, _)) => Ok(Lease::Fill),
            Err(Error::TooLarge(_)) => Ok(self
                .get_fd(namespace, key)
                .await?
                .map_or(Lease::Fill, Lease::Hit)),
            Err(Error::Bus { name, .. }) if name == names::error::UNKNOWN_METHOD => Ok(self
                .get(namespace, key)
                .await?
                .map_or(Lease::Fill, Lease::Hit)),
            Err(e) => Err(e),
        }
    }

    /// The value under the key, or else `fill()`'s, put and returned; with a daemon that has
    /// `GetOrLease`, concurrent callers (any process) on one missing key run `fill` once and
    /// the others wait up to `lease` for its value. A `fill` that fails puts nothing: the
    /// lease lapses and the next caller fills.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let v = client
    ///     .get_or_insert_with("ns", "k", Duration::from_secs(5), || async {
    ///         Ok::<_, numa_cache_client::Error>(b"expensive".to_vec())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_or_insert_with<F, Fut, E>(
        &self,
        namespace: &str,
        key: &str,
        lease: Duration,
        fill: F,
    ) -> Result<Vec<u8>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
        E: From<Error>,
    {
        if let Lease::Hit(v) = self.get_or_lease(namespace, key, lease).await? {
            return Ok(v);
        }
        let v = fill().await?;
        self.put(namespace, key, &v).await?;
        Ok(v)
    }

    /// Remove an entry; true when there was one.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let existed = client.delete("ns", "k").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, namespace: &str, key: &str) -> Result<bool> {
        Ok(self.cache.delete(namespace, key).await?)
    }

    /// What is known of an entry without reading it, `None` when there is none.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// if let Some(info) = client.lookup("ns", "k").await? {
    ///     println!("{} bytes on node {}", info.size, info.node);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lookup(&self, namespace: &str, key: &str) -> Result<Option<EntryInfo>> {
        match self.cache.lookup(namespace, key).await.map_err(Error::from) {
            Ok(d) => EntryInfo::from_dict(&Dict::from(d)).map(Some),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove every entry of a namespace; returns how many (polkit `manage-cache`).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let removed = client.clear("ns").await?;
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self, namespace: &str) -> Result<u64> {
        self.admin(self.cache.inner(), "Clear", &(namespace,)).await
    }

    /// Snapshot every shard; returns the snapshot's name (polkit `manage-cache`).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let name = client.create_snapshot().await?;
    /// # Ok(()) }
    /// ```
    pub async fn create_snapshot(&self) -> Result<String> {
        self.admin(self.cache.inner(), "CreateSnapshot", &()).await
    }

    /// Snapshot names, oldest first (polkit `manage-cache`).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// for name in client.list_snapshots().await? { println!("{name}"); }
    /// # Ok(()) }
    /// ```
    pub async fn list_snapshots(&self) -> Result<Vec<String>> {
        self.admin(self.cache.inner(), "ListSnapshots", &()).await
    }

    /// Delete a snapshot by name (polkit `manage-cache`); `NotFound` when there is none.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// client.delete_snapshot("20261125T041500Z").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.admin(self.cache.inner(), "DeleteSnapshot", &(name,))
            .await
    }

    // ---- org.opdbus.NumaCache.Topology -----------------------------------------------------

    /// Every Topology property, read in one call.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let t = client.topology().await?;
    /// println!("{} nodes, generation {}", t.node_ids.len(), t.generation);
    /// # Ok(()) }
    /// ```
    pub async fn topology(&self) -> Result<TopologyInfo> {
        let p: TopologyProps = self.get_all(names::ROOT_PATH, iface::TOPOLOGY).await?;
        Ok(TopologyInfo {
            numa_available: p.numa_available,
            node_ids: p.node_ids,
            allowed_cpus: p.allowed_cpus,
            allowed_nodes: p.allowed_nodes,
            total_memory_bytes: p.total_memory_bytes,
            distances: p.distances,
            optimal_strategy: p.optimal_strategy,
            generation: p.generation,
        })
    }

    /// `GetTopology`: the topology JSON, parsed.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let report = client.get_topology().await?;
    /// println!("optimal strategy: {}", report.optimal_strategy);
    /// # Ok(()) }
    /// ```
    pub async fn get_topology(&self) -> Result<TopologyReport> {
        let text = self.topology.get_topology().await?;
        parse_json(&text, "GetTopology")
    }

    /// `GetTopology` as the daemon sent it (JSON text).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let json = client.get_topology_json().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_topology_json(&self) -> Result<String> {
        Ok(self.topology.get_topology().await?)
    }

    /// The node whose CPU list holds `cpu`.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let node = client.node_of_cpu(0).await?;
    /// # Ok(()) }
    /// ```
    pub async fn node_of_cpu(&self, cpu: u32) -> Result<u32> {
        Ok(self.topology.node_of_cpu(cpu).await?)
    }

    /// Ask the daemon to re-read the topology now.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// client.refresh().await?;
    /// # Ok(()) }
    /// ```
    pub async fn refresh(&self) -> Result<()> {
        Ok(self.topology.refresh().await?)
    }

    /// Every Node property of node `id`, read in one call; `UnknownObject` (as
    /// [`Error::Bus`]) for a node the daemon does not have.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let n = client.node(0).await?;
    /// println!("node 0: {} CPUs, {} bytes free", n.cpus.len(), n.memory_free_bytes);
    /// # Ok(()) }
    /// ```
    pub async fn node(&self, id: u32) -> Result<NodeInfo> {
        let p: NodeProps = self.get_all(&names::node_path(id), iface::NODE).await?;
        Ok(NodeInfo {
            id: p.id,
            cpus: p.cpus,
            has_cpu: p.has_cpu,
            has_memory: p.has_memory,
            memory_total_bytes: p.memory_total_bytes,
            memory_free_bytes: p.memory_free_bytes,
            distances: p.distances,
            cache_entries: p.cache_entries,
            cache_bytes: p.cache_bytes,
            memory_tier_bytes: p.memory_tier_bytes,
            hit_rate: p.hit_rate,
        })
    }

    /// Every node, in `NodeIds` order.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// for n in client.nodes().await? { println!("node {}", n.id); }
    /// # Ok(()) }
    /// ```
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let ids = self.topology.node_ids().await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.node(id).await?);
        }
        Ok(out)
    }

    // ---- org.opdbus.NumaCache.Strategy -----------------------------------------------------

    /// Every Strategy property, read in one call.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// println!("strategy: {}", client.strategy().await?.name);
    /// # Ok(()) }
    /// ```
    pub async fn strategy(&self) -> Result<StrategyInfo> {
        let p: StrategyProps = self.get_all(names::ROOT_PATH, iface::STRATEGY).await?;
        Ok(StrategyInfo {
            name: p.name,
            node_preference: u32::try_from(p.node_preference).ok(),
            memory_policy: p.memory_policy,
            workload_type: p.workload_type,
            affected_processes: p.affected_processes,
        })
    }

    /// Switch the placement strategy (polkit `set-strategy`); `node_preference` `None` for
    /// none.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let r = client.set_strategy("round_robin", None).await?;
    /// assert_eq!(r.status, "applied");
    /// # Ok(()) }
    /// ```
    pub async fn set_strategy(
        &self,
        strategy: &str,
        node_preference: Option<u32>,
    ) -> Result<StrategyChange> {
        let node = node_arg(node_preference)?;
        let d: HashMap<String, OwnedVariant> = self
            .admin(self.strategy.inner(), "SetStrategy", &(strategy, node))
            .await?;
        StrategyChange::from_dict(&Dict::from(d))
    }

    /// Tune placement for a workload (polkit `optimize`): `cpu_intensive`,
    /// `memory_intensive`, `io_intensive` or `balanced`; `memory_policy` `None` lets the
    /// workload decide.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// client.optimize("balanced", None, None).await?;
    /// # Ok(()) }
    /// ```
    pub async fn optimize(
        &self,
        workload_type: &str,
        target_node: Option<u32>,
        memory_policy: Option<&str>,
    ) -> Result<StrategyChange> {
        let node = node_arg(target_node)?;
        let d: HashMap<String, OwnedVariant> = self
            .admin(
                self.strategy.inner(),
                "Optimize",
                &(workload_type, node, memory_policy.unwrap_or("")),
            )
            .await?;
        StrategyChange::from_dict(&Dict::from(d))
    }

    /// Pin every thread of `pid` to `node`'s CPUs and migrate its pages there (polkit
    /// `bind-process`); the daemon's full reply.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let r = client.bind_process(std::process::id(), 0, "bind").await?;
    /// println!("{} threads", r.u64("threads")?);
    /// # Ok(()) }
    /// ```
    pub async fn bind_process(&self, pid: u32, node: u32, memory_policy: &str) -> Result<Dict> {
        let node = node_arg(Some(node))?;
        let d: HashMap<String, OwnedVariant> = self
            .admin(
                self.strategy.inner(),
                "BindProcess",
                &(pid, node, memory_policy),
            )
            .await?;
        Ok(Dict::from(d))
    }

    // ---- org.opdbus.NumaCache.CacheStats ---------------------------------------------------

    /// Every CacheStats property, read in one call.
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let s = client.stats().await?;
    /// println!("{} entries, hit rate {:.2}", s.entries, s.hit_rate);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<CacheStatsInfo> {
        let p: StatsProps = self.get_all(names::ROOT_PATH, iface::CACHE_STATS).await?;
        Ok(CacheStatsInfo {
            entries: p.entries,
            logical_bytes: p.logical_bytes,
            stored_bytes: p.stored_bytes,
            hits: p.hits,
            misses: p.misses,
            hit_rate: p.hit_rate,
            evictions: p.evictions,
            local_hit_ratio: p.local_hit_ratio,
        })
    }

    /// `GetStats`: the statistics JSON (`node_distribution`, `numa_benefits`, totals, ...).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let s = client.get_stats().await?;
    /// println!("{}", s["node_distribution"]);
    /// # Ok(()) }
    /// ```
    pub async fn get_stats(&self) -> Result<serde_json::Value> {
        let text = self.stats.get_stats().await?;
        parse_json(&text, "GetStats")
    }

    /// `GetHistory`: stored statistics rows between two Unix times (`until` 0: now).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let rows = client.get_history(0, 0).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_history(&self, since_unix: u64, until_unix: u64) -> Result<serde_json::Value> {
        let text = self.stats.get_history(since_unix, until_unix).await?;
        parse_json(&text, "GetHistory")
    }

    /// Reset the hit and miss counters (polkit `manage-cache`).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// client.reset_counters().await?;
    /// # Ok(()) }
    /// ```
    pub async fn reset_counters(&self) -> Result<()> {
        self.admin(self.stats.inner(), "ResetCounters", &()).await
    }

    /// `org.freedesktop.DBus.Peer.Ping` on the daemon: one bare round trip (the baseline the
    /// benchmarks compare against).
    ///
    /// ```no_run
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// client.ping().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<()> {
        let _: () = self
            .conn
            .call_method(
                Some(names::BUS_NAME),
                names::ROOT_PATH,
                Some("org.freedesktop.DBus.Peer"),
                "Ping",
                &(),
            )
            .await?
            .body()
            .deserialize()?;
        Ok(())
    }
}

fn node_arg(node: Option<u32>) -> Result<i32> {
    match node {
        None => Ok(-1),
        Some(n) => i32::try_from(n)
            .map_err(|_| Error::InvalidArgument(format!("node {n} is not a node id"))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::Protocol(format!("{what} returned JSON that does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::proxy::Defaults;

    #[test]
    fn the_proxies_name_the_interfaces_of_the_contract() {
        let name = |n: &Option<zbus::names::InterfaceName<'static>>| {
            n.as_ref().map(|i| i.to_string()).unwrap_or_default()
        };
        assert_eq!(name(TopologyProxy::INTERFACE), iface::TOPOLOGY);
        assert_eq!(name(StrategyProxy::INTERFACE), iface::STRATEGY);
        assert_eq!(name(CacheStatsProxy::INTERFACE), iface::CACHE_STATS);
        assert_eq!(name(CacheProxy::INTERFACE), iface::CACHE);
        assert_eq!(name(NodeProxy::INTERFACE), iface::NODE);
        for d in [
            CacheProxy::DESTINATION,
            TopologyProxy::DESTINATION,
            NodeProxy::DESTINATION,
        ] {
            assert_eq!(
                d.as_ref().map(|b| b.to_string()).as_deref(),
                Some(names::BUS_NAME)
            );
        }
        assert_eq!(
            CacheProxy::PATH.as_ref().map(|p| p.to_string()).as_deref(),
            Some(names::ROOT_PATH)
        );
    }

    #[test]
    fn node_arguments_beyond_i32_are_refused_by_name() {
        assert_eq!(node_arg(None).unwrap(), -1);
        assert!(matches!(
            node_arg(Some(u32::MAX)),
            Err(Error::InvalidArgument(_))
        ));
    }
}
