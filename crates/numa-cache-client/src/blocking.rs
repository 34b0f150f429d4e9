//! The blocking facade: the same calls as [`crate::Client`] for code without an async
//! runtime, or synchronous code that runs inside one (as operation-dbus's caches do).
//!
//! The connection lives on a small runtime of its own, on one background thread; each call
//! is sent there and the calling thread waits on a channel. That works from plain threads
//! and from inside another tokio runtime alike (where `block_on` would panic).
//!
//! ```no_run
//! use numa_cache_client::blocking::Client;
//! let client = Client::system()?;
//! client.put("ns", "k", b"v")?;
//! assert_eq!(client.get("ns", "k")?.as_deref(), Some(&b"v"[..]));
//! # Ok::<(), numa_cache_client::Error>(())
//! ```

use crate::client::{ClientBuilder, Lease};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::types::{
    CacheStatsInfo, Dict, EntryInfo, NodeInfo, PutOptions, StrategyChange, StrategyInfo,
    TopologyInfo, TopologyReport,
};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

/// The background runtime: one thread driving a current-thread tokio runtime until the
/// last client using it is dropped.
#[derive(Debug)]
struct Runtime {
    handle: tokio::runtime::Handle,
    thread_id: ThreadId,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Runtime {
    fn start() -> Result<Arc<Runtime>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the client's runtime", e))?;
        let handle = rt.handle().clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("numa-cache-client".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })
            .map_err(|e| Error::io("starting the client's thread", e))?;
        Ok(Arc::new(Runtime {
            handle,
            thread_id: thread.thread().id(),
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    fn run<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        if std::thread::current().id() == self.thread_id {
            return Err(Error::Protocol(
                "a blocking numa-cache call was made from the client's own runtime thread \
                 (it would wait for itself)"
                    .into(),
            ));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| stopped())?
    }

    async fn run_async<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Transport(zbus::Error::Failure(
        "the numa-cache client's runtime thread stopped".into(),
    ))
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.stop.lock()
            && let Some(tx) = stop.take()
        {
            let _ = tx.send(());
        }
        if std::thread::current().id() != self.thread_id
            && let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// [`crate::Client`] with blocking calls. Cheap to clone: clones share the connection and
/// its thread.
///
/// ```no_run
/// let client = numa_cache_client::blocking::Client::system()?;
/// println!("{} nodes", client.topology()?.node_ids.len());
/// # Ok::<(), numa_cache_client::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: crate::Client,
    rt: Arc<Runtime>,
}

impl Client {
    /// Connect to the system bus with default settings.
    ///
    /// ```no_run
    /// let client = numa_cache_client::blocking::Client::system()?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn system() -> Result<Client> {
        Client::from_builder(crate::Client::builder())
    }

    /// Connect to the bus at `address` with default settings.
    ///
    /// ```no_run
    /// let client = numa_cache_client::blocking::Client::connect("unix:path=/tmp/test-bus")?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn connect(address: &str) -> Result<Client> {
        Client::from_builder(crate::Client::builder().address(address))
    }

    /// Connect with the settings of `builder` (it must not carry a connection made on
    /// another runtime).
    ///
    /// ```no_run
    /// let b = numa_cache_client::Client::builder().fd_threshold(64 << 10);
    /// let client = numa_cache_client::blocking::Client::from_builder(b)?;
    /// # Ok::<(), numa_cache_client::Error>(())
    /// ```
    pub fn from_builder(builder: ClientBuilder) -> Result<Client> {
        let rt = Runtime::start()?;
        let inner = rt.run(builder.build())?;
        Ok(Client { inner, rt })
    }

    /// The same as [`Client::from_builder`], awaited from async code without blocking its
    /// executor.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), numa_cache_client::Error> {
    /// let b = numa_cache_client::Client::builder();
    /// let client = numa_cache_client::blocking::Client::from_builder_async(b).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_builder_async(builder: ClientBuilder) -> Result<Client> {
        let rt = Runtime::start()?;
        let inner = rt.run_async(builder.build()).await?;
        Ok(Client { inner, rt })
    }

    /// The async client underneath (its calls may be awaited from any tokio runtime).
    ///
    /// ```no_run
    /// # fn demo(client: numa_cache_client::blocking::Client) {
    /// let async_client: &numa_cache_client::Client = client.as_async();
    /// # }
    /// ```
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(crate::Client) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.rt.run(f(self.inner.clone()))
    }

    /// [`crate::Client::put`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let node = c.put("ns", "k", b"v")?;
    /// # Ok(()) }
    /// ```
    pub fn put(&self, namespace: &str, key: &str, value: &[u8]) -> Result<u32> {
        self.put_with(namespace, key, value, PutOptions::new())
    }

    /// [`crate::Client::put_with`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// use numa_cache_client::PutOptions;
    /// c.put_with("ns", "k", b"v", PutOptions::new().sync(true))?;
    /// # Ok(()) }
    /// ```
    pub fn put_with(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        options: PutOptions,
    ) -> Result<u32> {
        let (ns, k, v) = (namespace.to_owned(), key.to_owned(), value.to_vec());
        self.run(|c| async move { c.put_with(&ns, &k, &v, options).await })
    }

    /// [`crate::Client::get`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let v = c.get("ns", "k")?;
    /// # Ok(()) }
    /// ```
    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.run(|c| async move { c.get(&ns, &k).await })
    }

    /// [`crate::Client::get_many`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let found = c.get_many("ns", &["a", "b"])?;
    /// # Ok(()) }
    /// ```
    pub fn get_many(
        &self,
        namespace: &str,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<u8>>> {
        let ns = namespace.to_owned();
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        self.run(|c| async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            c.get_many(&ns, &refs).await
        })
    }

    /// [`crate::Client::put_many`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let stored = c.put_many("ns", &[("a", &b"1"[..]), ("b", &b"2"[..])])?;
    /// # Ok(()) }
    /// ```
    pub fn put_many(&self, namespace: &str, entries: &[(&str, &[u8])]) -> Result<u32> {
        self.put_many_with(namespace, entries, PutOptions::new())
    }

    /// [`crate::Client::put_many_with`].
    ///
    /// ```no_run
    /// use numa_cache_client::PutOptions;
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.put_many_with("ns", &[("a", &b"1"[..])], PutOptions::new().sync(true))?;
    /// # Ok(()) }
    /// ```
    pub fn put_many_with(
        &self,
        namespace: &str,
        entries: &[(&str, &[u8])],
        options: PutOptions,
    ) -> Result<u32> {
        let ns = namespace.to_owned();
        let owned: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect();
        self.run(|c| async move {
            let refs: Vec<(&str, &[u8])> = owned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            c.put_many_with(&ns, &refs, options).await
        })
    }

    /// [`crate::Client::open_direct`]: a blocking client over a direct connection, on this
    /// client's background thread.
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let direct = c.open_direct()?;
    /// let v = direct.get("ns", "k")?;
    /// # Ok(()) }
    /// ```
    pub fn open_direct(&self) -> Result<Client> {
        let inner = self.run(|c| async move { c.open_direct().await })?;
        Ok(Client {
            inner,
            rt: Arc::clone(&self.rt),
        })
    }

    /// [`crate::Client::get_fd`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let v = c.get_fd("ns", "big")?;
    /// # Ok(()) }
    /// ```
    pub fn get_fd(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.run(|c| async move { c.get_fd(&ns, &k).await })
    }

    /// [`crate::Client::get_or_lease`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let l = c.get_or_lease("ns", "k", std::time::Duration::from_secs(5))?;
    /// # Ok(()) }
    /// ```
    pub fn get_or_lease(&self, namespace: &str, key: &str, lease: Duration) -> Result<Lease> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.run(|c| async move { c.get_or_lease(&ns, &k, lease).await })
    }

    /// [`crate::Client::get_or_insert_with`], with `fill` run on the calling thread.
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let v = c.get_or_insert_with("ns", "k", std::time::Duration::from_secs(5), || {
    ///     Ok::<_, numa_cache_client::Error>(b"expensive".to_vec())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn get_or_insert_with<F, E>(
        &self,
        namespace: &str,
        key: &str,
        lease: Duration,
        fill: F,
    ) -> Result<Vec<u8>, E>
    where
        F: FnOnce() -> Result<Vec<u8>, E>,
        E: From<Error>,
    {
        if let Lease::Hit(v) = self.get_or_lease(namespace, key, lease)? {
            return Ok(v);
        }
        let v = fill()?;
        self.put(namespace, key, &v)?;
        Ok(v)
    }

    /// [`crate::Client::delete`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let existed = c.delete("ns", "k")?;
    /// # Ok(()) }
    /// ```
    pub fn delete(&self, namespace: &str, key: &str) -> Result<bool> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.run(|c| async move { c.delete(&ns, &k).await })
    }

    /// [`crate::Client::lookup`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let info = c.lookup("ns", "k")?;
    /// # Ok(()) }
    /// ```
    pub fn lookup(&self, namespace: &str, key: &str) -> Result<Option<EntryInfo>> {
        let (ns, k) = (namespace.to_owned(), key.to_owned());
        self.run(|c| async move { c.lookup(&ns, &k).await })
    }

    /// [`crate::Client::clear`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let removed = c.clear("ns")?;
    /// # Ok(()) }
    /// ```
    pub fn clear(&self, namespace: &str) -> Result<u64> {
        let ns = namespace.to_owned();
        self.run(|c| async move { c.clear(&ns).await })
    }

    /// [`crate::Client::create_snapshot`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let name = c.create_snapshot()?;
    /// # Ok(()) }
    /// ```
    pub fn create_snapshot(&self) -> Result<String> {
        self.run(|c| async move { c.create_snapshot().await })
    }

    /// [`crate::Client::list_snapshots`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let names = c.list_snapshots()?;
    /// # Ok(()) }
    /// ```
    pub fn list_snapshots(&self) -> Result<Vec<String>> {
        self.run(|c| async move { c.list_snapshots().await })
    }

    /// [`crate::Client::delete_snapshot`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.delete_snapshot("20261125T041500Z")?;
    /// # Ok(()) }
    /// ```
    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.run(|c| async move { c.delete_snapshot(&name).await })
    }

    /// [`crate::Client::topology`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let t = c.topology()?;
    /// # Ok(()) }
    /// ```
    pub fn topology(&self) -> Result<TopologyInfo> {
        self.run(|c| async move { c.topology().await })
    }

    /// [`crate::Client::get_topology`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let t = c.get_topology()?;
    /// # Ok(()) }
    /// ```
    pub fn get_topology(&self) -> Result<TopologyReport> {
        self.run(|c| async move { c.get_topology().await })
    }

    /// [`crate::Client::get_topology_json`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let json = c.get_topology_json()?;
    /// # Ok(()) }
    /// ```
    pub fn get_topology_json(&self) -> Result<String> {
        self.run(|c| async move { c.get_topology_json().await })
    }

    /// [`crate::Client::node_of_cpu`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let n = c.node_of_cpu(0)?;
    /// # Ok(()) }
    /// ```
    pub fn node_of_cpu(&self, cpu: u32) -> Result<u32> {
        self.run(|c| async move { c.node_of_cpu(cpu).await })
    }

    /// [`crate::Client::refresh`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.refresh()?;
    /// # Ok(()) }
    /// ```
    pub fn refresh(&self) -> Result<()> {
        self.run(|c| async move { c.refresh().await })
    }

    /// [`crate::Client::node`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let n = c.node(0)?;
    /// # Ok(()) }
    /// ```
    pub fn node(&self, id: u32) -> Result<NodeInfo> {
        self.run(|c| async move { c.node(id).await })
    }

    /// [`crate::Client::nodes`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let all = c.nodes()?;
    /// # Ok(()) }
    /// ```
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.run(|c| async move { c.nodes().await })
    }

    /// [`crate::Client::strategy`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let s = c.strategy()?;
    /// # Ok(()) }
    /// ```
    pub fn strategy(&self) -> Result<StrategyInfo> {
        self.run(|c| async move { c.strategy().await })
    }

    /// [`crate::Client::set_strategy`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.set_strategy("local_node", None)?;
    /// # Ok(()) }
    /// ```
    pub fn set_strategy(
        &self,
        strategy: &str,
        node_preference: Option<u32>,
    ) -> Result<StrategyChange> {
        let s = strategy.to_owned();
        self.run(|c| async move { c.set_strategy(&s, node_preference).await })
    }

    /// [`crate::Client::optimize`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.optimize("balanced", None, None)?;
    /// # Ok(()) }
    /// ```
    pub fn optimize(
        &self,
        workload_type: &str,
        target_node: Option<u32>,
        memory_policy: Option<&str>,
    ) -> Result<StrategyChange> {
        let (w, p) = (workload_type.to_owned(), memory_policy.map(str::to_owned));
        self.run(|c| async move { c.optimize(&w, target_node, p.as_deref()).await })
    }

    /// [`crate::Client::bind_process`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.bind_process(std::process::id(), 0, "bind")?;
    /// # Ok(()) }
    /// ```
    pub fn bind_process(&self, pid: u32, node: u32, memory_policy: &str) -> Result<Dict> {
        let p = memory_policy.to_owned();
        self.run(|c| async move { c.bind_process(pid, node, &p).await })
    }

    /// [`crate::Client::stats`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let s = c.stats()?;
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<CacheStatsInfo> {
        self.run(|c| async move { c.stats().await })
    }

    /// [`crate::Client::get_stats`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let s = c.get_stats()?;
    /// # Ok(()) }
    /// ```
    pub fn get_stats(&self) -> Result<serde_json::Value> {
        self.run(|c| async move { c.get_stats().await })
    }

    /// [`crate::Client::get_history`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// let rows = c.get_history(0, 0)?;
    /// # Ok(()) }
    /// ```
    pub fn get_history(&self, since_unix: u64, until_unix: u64) -> Result<serde_json::Value> {
        self.run(|c| async move { c.get_history(since_unix, until_unix).await })
    }

    /// [`crate::Client::reset_counters`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.reset_counters()?;
    /// # Ok(()) }
    /// ```
    pub fn reset_counters(&self) -> Result<()> {
        self.run(|c| async move { c.reset_counters().await })
    }

    /// [`crate::Client::ping`].
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// c.ping()?;
    /// # Ok(()) }
    /// ```
    pub fn ping(&self) -> Result<()> {
        self.run(|c| async move { c.ping().await })
    }

    /// [`crate::Client::events`] as an iterator that blocks for the next signal.
    ///
    /// ```no_run
    /// # fn demo(c: numa_cache_client::blocking::Client) -> numa_cache_client::Result<()> {
    /// for event in c.events()? {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> Result<Events> {
        let mut stream = self.run(|c| async move { c.events().await })?;
        let (tx, rx) = mpsc::channel();
        self.rt.handle.spawn(async move {
            while let Some(item) = stream.next().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        Ok(Events {
            rx,
            _rt: Arc::clone(&self.rt),
        })
    }
}

/// The daemon's signals, one at a time; see [`Client::events`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Result<Event>>,
    _rt: Arc<Runtime>,
}

impl Iterator for Events {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().ok()
    }
}
