//! org.opdbus.NumaCache.Cache on the root object: the data plane (Put, Get, their fd forms,
//! Delete, Lookup) and its polkit-gated administration (Clear, snapshots).
//!
//! Latency (`Service::latency`, shown by /metrics and GetStats) is the engine call time only:
//! `Cache::get`/`Cache::put` on the blocking pool, hits, misses and errors alike. Bus transport,
//! caller lookup, memfd copies and blocking-pool queueing are left out, so the histogram
//! tells the engine's speed apart from the bus's.

pub mod memfd;

use crate::service::errors::ServiceError;
use crate::service::polkit::actions;
use crate::service::{Service, blocking};
use crate::store::{PutOptions, validate_key, validate_namespace};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use zbus::message::Header;
use zbus::{OwnedFd, OwnedVariant, Variant, interface};

/// The Cache interface.
pub struct CacheIface {
    svc: Arc<Service>,
}

impl CacheIface {
    /// Serve the cache of `svc`.
    pub fn new(svc: Arc<Service>) -> CacheIface {
        CacheIface { svc }
    }
}

/// Check a namespace with the engine's rule (`[a-z0-9][a-z0-9_.-]{0,63}`) before any work.
pub fn check_namespace(ns: &str) -> Result<(), ServiceError> {
    Ok(validate_namespace(ns)?)
}

fn check_entry(ns: &str, key: &str) -> Result<(), ServiceError> {
    validate_namespace(ns)?;
    Ok(validate_key(key)?)
}

/// Put options: `ttl_seconds` (t) and `node` (i); anything else is refused by name.
pub fn parse_put_options(
    options: &HashMap<String, OwnedVariant>,
) -> Result<PutOptions, ServiceError> {
    let mut opts = PutOptions::default();
    for (name, value) in options {
        match name.as_str() {
            "ttl_seconds" => {
                let ttl = int_of(value).filter(|t| *t > 0).ok_or_else(|| {
                    ServiceError::invalid(
                        "option ttl_seconds must be a positive number of seconds (type t)",
                    )
                })?;
                opts.ttl = Some(Duration::from_secs(ttl as u64));
            }
            "node" => {
                let node = int_of(value).ok_or_else(|| {
                    ServiceError::invalid("option node must be a node id (type i), or -1 for none")
                })?;
                opts.node = match node {
                    -1 => None,
                    n => Some(u32::try_from(n).map_err(|_| {
                        ServiceError::invalid(format!("option node {n} is not a node id"))
                    })?),
                };
            }
            other => {
                return Err(ServiceError::invalid(format!(
                    "unknown option {other:?}: allowed options are ttl_seconds (t) and node (i)"
                )));
            }
        }
    }
    Ok(opts)
}

/// Any integer variant as i128 (busctl users type `u` or `i` as readily as `t`).
fn int_of(v: &OwnedVariant) -> Option<i128> {
    if let Ok(n) = u64::try_from(v) {
        return Some(n.into());
    }
    if let Ok(n) = i64::try_from(v) {
        return Some(n.into());
    }
    if let Ok(n) = u32::try_from(v) {
        return Some(n.into());
    }
    if let Ok(n) = i32::try_from(v) {
        return Some(n.into());
    }
    None
}

#[interface(name = "org.opdbus.NumaCache.Cache")]
impl CacheIface {
    /// Store value under (namespace, key); options ttl_seconds (t) and node (i, explicit
    /// placement). Returns the node the entry was placed on. A namespace belongs to the uid
    /// that first wrote to it; other non-root callers get AccessDenied.
    #[zbus(out_args("node"))]
    async fn put(
        &self,
        namespace: String,
        key: String,
        value: ByteBuf,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, ServiceError> {
        let _call = self.svc.enter()?;
        check_entry(&namespace, &key)?;
        let opts = parse_put_options(&options)?;
        let limit = self.svc.limits.max_value_bytes;
        if value.len() as u64 > limit {
            return Err(ServiceError::TooLarge(format!(
                "the value is {} bytes; the limit is {limit} bytes",
                value.len()
            )));
        }
        let caller = self.svc.caller(&header).await?;
        let cache = Arc::clone(&self.svc.cache);
        let latency = Arc::clone(&self.svc.latency);
        blocking(move || {
            let r = latency
                .put
                .time(|| cache.put(&namespace, &key, &value, &opts, &caller));
            Ok(r?)
        })
        .await
    }

    /// The value stored under (namespace, key); NotFound when there is none. Values larger
    /// than 16 MiB must be read with GetFd.
    #[zbus(out_args("value"))]
    async fn get(
        &self,
        namespace: String,
        key: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<ByteBuf, ServiceError> {
        let _call = self.svc.enter()?;
        check_entry(&namespace, &key)?;
        let caller = self.svc.caller(&header).await?;
        let cache = Arc::clone(&self.svc.cache);
        let inline = self.svc.limits.max_inline_bytes;
        let latency = Arc::clone(&self.svc.latency);
        blocking(move || {
            let value = latency.get.time(|| cache.get(&namespace, &key, &caller));
            let value = value?;
            if value.len() as u64 > inline {
                return Err(ServiceError::TooLarge(format!(
                    "the value is {} bytes, more than {inline} fit in a message: read it with GetFd",
                    value.len()
                )));
            }
            Ok(ByteBuf::from(value))
        })
        .await
    }

    /// The value as a sealed memfd (read-only, fixed size) and its size in bytes: for values
    /// too large for a message.
    #[zbus(out_args("fd", "size"))]
    async fn get_fd(
        &self,
        namespace: String,
        key: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(OwnedFd, u64), ServiceError> {
        let _call = self.svc.enter()?;
        check_entry(&namespace, &key)?;
        let caller = self.svc.caller(&header).await?;
        let cache = Arc::clone(&self.svc.cache);
        let latency = Arc::clone(&self.svc.latency);
        blocking(move || {
            let value = latency.get.time(|| cache.get(&namespace, &key, &caller));
            let value = value?;
            let fd = memfd::sealed_memfd(&value).map_err(|e| {
                ServiceError::Unavailable(format!("could not create a memfd for the value: {e}"))
            })?;
            Ok((OwnedFd::from(fd), value.len() as u64))
        })
        .await
    }

    /// Store the contents of fd, which must be a memfd sealed with F_SEAL_WRITE,
    /// F_SEAL_SHRINK and F_SEAL_GROW; options and the reply as for Put.
    #[zbus(out_args("node"))]
    async fn put_fd(
        &self,
        namespace: String,
        key: String,
        fd: OwnedFd,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, ServiceError> {
        let _call = self.svc.enter()?;
        check_entry(&namespace, &key)?;
        let opts = parse_put_options(&options)?;
        let caller = self.svc.caller(&header).await?;
        let cache = Arc::clone(&self.svc.cache);
        let limit = self.svc.limits.max_value_bytes;
        let latency = Arc::clone(&self.svc.latency);
        blocking(move || {
            let value = memfd::read_sealed(std::os::fd::OwnedFd::from(fd), limit)?;
            let r = latency
                .put
                .time(|| cache.put(&namespace, &key, &value, &opts, &caller));
            Ok(r?)
        })
        .await
    }

    /// Remove the entry; true when there was one. Refused (AccessDenied) in another user's
    /// namespace for non-root callers.
    #[zbus(out_args("existed"))]
    async fn delete(
        &self,
        namespace: String,
        key: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<bool, ServiceError> {
        let _call = self.svc.enter()?;
        check_entry(&namespace, &key)?;
        let caller = self.svc.caller(&header).await?;
        let cache = Arc::clone(&self.svc.cache);
        blocking(move || Ok(cache.delete(&namespace, &key, &caller)?)).await
    }

    /// What is known of an entry without reading it: size, stored_size, node, created,
    /// last_access, hits (t/u) and expires (Unix seconds, 0 for never).
    #[zbus(out_args("info"))]
    async fn lookup(
        &self,
        namespace: String,
        key: String,
    ) -> Result<HashMap<String, Variant<'static>>, ServiceError> {
        let _call = self.svc.enter()?;
        check_entry(&namespace, &key)?;
        let cache = Arc::clone(&self.svc.cache);
        let info = blocking(move || Ok(cache.lookup(&namespace, &key)?)).await?;
        Ok(HashMap::from([
            ("size".to_string(), Variant::from(info.size)),
            ("stored_size".to_string(), Variant::from(info.stored_size)),
            ("node".to_string(), Variant::from(info.node)),
            ("created".to_string(), Variant::from(info.created)),
            ("last_access".to_string(), Variant::from(info.last_access)),
            ("hits".to_string(), Variant::from(info.hits)),
            (
                "expires".to_string(),
                Variant::from(info.expires.unwrap_or(0)),
            ),
        ]))
    }

    /// Remove every entry of a namespace; returns how many. polkit action
    /// org.opdbus.NumaCache.manage-cache, and the namespace must be the caller's (or root).
    #[zbus(out_args("removed"))]
    async fn clear(
        &self,
        namespace: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u64, ServiceError> {
        let _call = self.svc.enter()?;
        check_namespace(&namespace)?;
        self.svc
            .polkit
            .check(&header, actions::MANAGE_CACHE)
            .await?;
        let caller = self.svc.caller(&header).await?;
        let cache = Arc::clone(&self.svc.cache);
        let removed = blocking(move || Ok(cache.clear(&namespace, &caller)?)).await?;
        tracing::info!(removed, "namespace cleared");
        Ok(removed)
    }

    /// Take a read-only snapshot of every shard; returns its name (UTC time, e.g.
    /// 20261125T041500Z). polkit action org.opdbus.NumaCache.manage-cache.
    #[zbus(out_args("name"))]
    async fn create_snapshot(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, ServiceError> {
        let _call = self.svc.enter()?;
        self.svc
            .polkit
            .check(&header, actions::MANAGE_CACHE)
            .await?;
        let cache = Arc::clone(&self.svc.cache);
        let name = blocking(move || Ok(cache.create_snapshot()?)).await?;
        tracing::info!(%name, "snapshot created");
        Ok(name)
    }

    /// The names of the kept snapshots, oldest first. polkit action
    /// org.opdbus.NumaCache.manage-cache.
    #[zbus(out_args("names"))]
    async fn list_snapshots(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<String>, ServiceError> {
        let _call = self.svc.enter()?;
        self.svc
            .polkit
            .check(&header, actions::MANAGE_CACHE)
            .await?;
        let cache = Arc::clone(&self.svc.cache);
        blocking(move || Ok(cache.list_snapshots()?)).await
    }

    /// Delete a snapshot by name; NotFound when there is none. polkit action
    /// org.opdbus.NumaCache.manage-cache.
    async fn delete_snapshot(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), ServiceError> {
        let _call = self.svc.enter()?;
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(ServiceError::invalid(format!(
                "invalid snapshot name {name:?}: use a name from ListSnapshots"
            )));
        }
        self.svc
            .polkit
            .check(&header, actions::MANAGE_CACHE)
            .await?;
        let cache = Arc::clone(&self.svc.cache);
        let shown = name.clone();
        blocking(move || Ok(cache.delete_snapshot(&name)?)).await?;
        tracing::info!(name = %shown, "snapshot deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_with_named_errors() {
        assert!(check_entry("embeddings.v1-a_b", "k").is_ok());
        for (ns, key) in [
            ("", "k"),
            ("_x", "k"),
            ("ns", ""),
            ("ns", &"k".repeat(2000)),
        ] {
            assert!(
                matches!(check_entry(ns, key), Err(ServiceError::InvalidArgument(_))),
                "{ns:?} {}",
                key.len()
            );
        }
        let opts = HashMap::from([(
            "colour".to_string(),
            OwnedVariant::try_from(Variant::from(1u32)).unwrap(),
        )]);
        let e = parse_put_options(&opts).unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("ttl_seconds"), "{e}");
        let opts = HashMap::from([(
            "node".to_string(),
            OwnedVariant::try_from(Variant::from(-1i32)).unwrap(),
        )]);
        assert_eq!(parse_put_options(&opts).unwrap().node, None);
    }
}
