//! org.opdbus.NumaCache.Cache on the root object: the data plane (Put, Get, their fd forms,
//! their batch forms, Delete, Lookup, GetOrLease, OpenDirect) and its polkit-gated
//! administration (Clear, snapshots), each a call of the application layer. The same
//! interface serves each direct connection (`direct`), as the caller who opened it and
//! without the administration.

/// The memfd helpers moved to `policy::memfd`; re-exported for existing users.
pub use crate::policy::memfd;

use crate::app::{AppError, PutArgs, Refusal, Requester};
use crate::service::Service;
use crate::service::direct::{DirectCaller, DirectServer};
use crate::service::direct_socket::{FD_CHARGE, Reply};
use crate::service::errors::{ServiceError, ServiceResult};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::sync::Arc;
use zbus::message::Header;
use zbus::{OwnedFd, OwnedVariant, Variant, interface};

/// The Cache interface.
pub struct CacheIface {
    svc: Arc<Service>,
    via: Via,
}

/// Where an instance of the interface is served.
enum Via {
    /// On the bus; OpenDirect hands out connections of this server (None: not offered).
    Bus(Option<Arc<DirectServer>>),
    /// On one direct connection, acting as the caller who opened it.
    Direct(Arc<DirectCaller>),
}

impl CacheIface {
    /// Serve the cache of `svc` on the bus, without OpenDirect.
    pub fn new(svc: Arc<Service>) -> CacheIface {
        CacheIface {
            svc,
            via: Via::Bus(None),
        }
    }

    /// Serve the cache of `svc` on the bus, with OpenDirect handing out connections of
    /// `direct`.
    pub fn with_direct(svc: Arc<Service>, direct: Arc<DirectServer>) -> CacheIface {
        CacheIface {
            svc,
            via: Via::Bus(Some(direct)),
        }
    }

    /// The caller of this call: the bus sender, or the direct connection's caller.
    async fn requester(&self, header: &Header<'_>) -> ServiceResult<Requester> {
        match &self.via {
            Via::Bus(_) => self.svc.requester(header).await,
            Via::Direct(caller) => Ok(caller.requester()),
        }
    }

    /// Room for a reply on this direct connection's reply budget (see [`Self::reserved_read`]).
    async fn reserve_reply(caller: &DirectCaller, bytes: u64) -> ServiceResult<Reply> {
        caller.replies().reserve(bytes).await.map_err(|e| {
            ServiceError(AppError::Unavailable(format!(
                "no room for the reply on this direct connection: {e}"
            )))
        })
    }

    /// `read` (a Get, GetMany or GetOrLease of `keys` in `namespace`), and on a direct
    /// connection the room its reply holds until written, so that values read for a peer
    /// that does not read its replies stay bounded. The room is what the values take now
    /// by the engine's entry map (no I/O; at least [`REPLY_FLOOR`]), taken before the read;
    /// if a Put grew a value meanwhile, the room is given back with the value read and the
    /// call goes around with the new size, [`RESIZE_TRIES`] times, then with room for the
    /// largest reply (`room.most`). So no value is held while its call waits for room, and
    /// calls of small values do not take room for 16 MiB each. A value larger than the
    /// uid's whole reply budget is read once, with all of it. None on the bus (the bus
    /// daemon reads the replies).
    async fn reserved_read<T, F, Fut>(
        &self,
        namespace: &str,
        keys: &[&str],
        room: Room,
        mut read: F,
        len: impl Fn(&T) -> u64,
    ) -> ServiceResult<(T, Option<Reply>)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, AppError>>,
    {
        let Via::Direct(caller) = &self.via else {
            return Ok((read().await?, None));
        };
        let Room { least, most } = room;
        let hint = || self.svc.app.reply_size_hint(namespace, keys);
        let mut need = hint();
        let mut tries = 0;
        loop {
            let last = tries == RESIZE_TRIES;
            tries += 1;
            let want = if last {
                most
            } else {
                need.clamp(least, most.max(least))
            };
            let reply = Self::reserve_reply(caller, want).await?;
            let held = reply.bytes();
            // Less than asked: the uid's whole budget, all there is to take.
            let all = held < want;
            // Grown while this call waited for room: go around before reading it.
            let now = hint();
            if !last && !all && now > held {
                need = now;
                continue;
            }
            let value = read().await?;
            let got = len(&value);
            if got <= held || last || all {
                return Ok((value, Some(reply)));
            }
            // Grown between the look and the read: give back the value and the room.
            drop((value, reply));
            need = got;
        }
    }

    /// AccessDenied for an administrative method on a direct connection: polkit's subject
    /// is the bus caller, so these are served on the bus only.
    fn bus_only(&self, member: &str) -> ServiceResult<()> {
        match self.via {
            Via::Bus(_) => Ok(()),
            Via::Direct(_) => Err(ServiceError(AppError::AccessDenied(
                Refusal::NotAuthorized,
                format!(
                    "{member} is an administrative method (polkit asks about the bus caller): \
                     call it on the system bus, not on a direct connection"
                ),
            ))),
        }
    }
}

/// The room a value-returning call on a direct connection takes for its reply: at least
/// `least`, at most `most` (what the call can return).
#[derive(Debug, Clone, Copy)]
struct Room {
    least: u64,
    most: u64,
}

impl Room {
    /// A reply carrying values (Get, GetMany, GetOrLease): at least [`REPLY_FLOOR`], at
    /// most `max_inline_bytes`.
    fn inline(svc: &Service) -> Room {
        Room {
            least: REPLY_FLOOR,
            most: svc.app.limits().max_inline_bytes,
        }
    }

    /// A reply carrying a memfd (GetFd): at least a descriptor's charge ([`FD_CHARGE`]), at
    /// most the uid's whole reply budget.
    fn memfd() -> Room {
        Room {
            least: FD_CHARGE,
            most: u64::MAX,
        }
    }
}

/// The least room a value-returning call on a direct connection takes for its reply (a
/// missing key's empty reply, a reply's own header and keys).
pub const REPLY_FLOOR: u64 = 4 << 10;
/// How often such a call goes around when a Put grew its values after it looked, before it
/// takes room for the largest reply.
pub const RESIZE_TRIES: usize = 2;

/// The reply to the call of `header` carries `bytes` of values: keep that much of `reply`
/// until it is written (given back now by a call on the bus, which reserved none).
fn keep_reply(reply: Option<Reply>, header: &Header<'_>, bytes: u64) {
    if let Some(reply) = reply {
        reply.keep(header.primary().serial_num().get(), bytes);
    }
}

/// Put options: `ttl_seconds` (t), `node` (i) and `sync` (b); anything else is refused by
/// name.
pub fn parse_put_options(options: &HashMap<String, OwnedVariant>) -> Result<PutArgs, ServiceError> {
    let mut args = PutArgs::default();
    for (name, value) in options {
        match name.as_str() {
            "ttl_seconds" => {
                let ttl = int_of(value)
                    .filter(|t| *t > 0)
                    .and_then(|t| u64::try_from(t).ok())
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "option ttl_seconds must be a positive number of seconds (type t)",
                        )
                    })?;
                args.ttl_seconds = Some(ttl);
            }
            "node" => {
                let node = int_of(value)
                    .and_then(|n| i64::try_from(n).ok())
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "option node must be a node id (type i), or -1 for none",
                        )
                    })?;
                args.node = Some(node);
            }
            "sync" => {
                args.sync = bool::try_from(value)
                    .map_err(|_| ServiceError::invalid("option sync must be a boolean (type b)"))?;
            }
            other => {
                return Err(ServiceError::invalid(format!(
                    "unknown option {other:?}: allowed options are ttl_seconds (t), node (i) and sync (b)"
                )));
            }
        }
    }
    Ok(args)
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
    /// Store value under (namespace, key); options ttl_seconds (t), node (i, explicit
    /// placement) and sync (b, durable before the reply). Returns the node the entry was
    /// placed on. A namespace belongs to the uid that first wrote to it; other non-root
    /// callers get AccessDenied.
    #[zbus(out_args("node"))]
    async fn put(
        &self,
        namespace: String,
        key: String,
        value: ByteBuf,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, ServiceError> {
        let args = parse_put_options(&options)?;
        let who = self.requester(&header).await?;
        Ok(self
            .svc
            .app
            .put(&who, namespace, key, value.into_vec(), args)
            .await?)
    }

    /// Single flight: (true, value) on a hit. On a miss the first caller gets (false, []) and
    /// a lease on the key, which its Put ends; callers that miss while the lease is held wait,
    /// up to lease_ms (1 to 20000), for that Put and get the value; if the lease expires
    /// first, the next caller gets it. Unavailable when lease_ms passes with the lease still
    /// held by another.
    #[zbus(out_args("hit", "value"))]
    async fn get_or_lease(
        &self,
        namespace: String,
        key: String,
        lease_ms: u32,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(bool, ByteBuf), ServiceError> {
        // The caller's own number, before any time passes.
        crate::app::lease::check_lease_ms(lease_ms)?;
        let who = self.requester(&header).await?;
        // On a direct connection the room is taken before the call (a fill may bring the
        // value while it waits); going around again asks only for what is left of lease_ms.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(lease_ms.into());
        let ((hit, value), reply) = self
            .reserved_read(
                &namespace,
                &[key.as_str()],
                Room::inline(&self.svc),
                || {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    // 0 (refused by name) stays 0; otherwise at least 1 ms.
                    let ms = u32::try_from(left.as_millis())
                        .unwrap_or(lease_ms)
                        .clamp(lease_ms.min(1), lease_ms);
                    self.svc
                        .app
                        .get_or_lease(&who, namespace.clone(), key.clone(), ms)
                },
                |(_, v)| v.len() as u64,
            )
            .await?;
        keep_reply(reply, &header, value.len() as u64);
        Ok((hit, ByteBuf::from(value)))
    }

    /// The values of the keys present, by key; missing keys are absent. At most 1024 keys,
    /// and the values found must fit in 16 MiB; past either, TooLarge.
    #[zbus(out_args("values"))]
    async fn get_many(
        &self,
        namespace: String,
        keys: Vec<String>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, ByteBuf>, ServiceError> {
        let who = self.requester(&header).await?;
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values = |found: &HashMap<String, Vec<u8>>| -> u64 {
            found.values().map(|v| v.len() as u64).sum()
        };
        let (found, reply) = self
            .reserved_read(
                &namespace,
                &names,
                Room::inline(&self.svc),
                || self.svc.app.get_many(&who, namespace.clone(), keys.clone()),
                values,
            )
            .await?;
        keep_reply(reply, &header, values(&found));
        Ok(found
            .into_iter()
            .map(|(k, v)| (k, ByteBuf::from(v)))
            .collect())
    }

    /// Store every (key, value) of entries in namespace with one set of options (as for
    /// Put), all or nothing; returns how many were stored. At most 1024 entries and 16 MiB
    /// of values; past either, TooLarge. A namespace that is another user's refuses the
    /// whole batch (AccessDenied).
    #[zbus(out_args("stored"))]
    async fn put_many(
        &self,
        namespace: String,
        entries: HashMap<String, ByteBuf>,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<u32, ServiceError> {
        let args = parse_put_options(&options)?;
        let who = self.requester(&header).await?;
        let entries = entries
            .into_iter()
            .map(|(k, v)| (k, v.into_vec()))
            .collect();
        Ok(self
            .svc
            .app
            .put_many(&who, namespace, entries, args)
            .await?)
    }

    /// A connected unix socket whose other end numa-cached serves as a peer-to-peer D-Bus
    /// connection offering this interface without its administrative methods, acting as the
    /// caller of OpenDirect (its uid, which the handshake must claim). At most 16 per user
    /// and 256 in all; past either, Unavailable. It closes when the caller hangs up.
    #[zbus(out_args("fd"))]
    async fn open_direct(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<OwnedFd, ServiceError> {
        let server = match &self.via {
            Via::Bus(Some(server)) => server,
            Via::Bus(None) => {
                return Err(ServiceError(AppError::Unavailable(
                    "this numa-cached serves no direct connections".into(),
                )));
            }
            Via::Direct(_) => {
                return Err(ServiceError(AppError::AccessDenied(
                    Refusal::NotAuthorized,
                    "OpenDirect is served on the system bus only, not on a direct connection"
                        .into(),
                )));
            }
        };
        let who = self.svc.requester(&header).await?;
        let svc = Arc::clone(&self.svc);
        let fd = server.open(who, move |caller| CacheIface {
            svc,
            via: Via::Direct(caller),
        })?;
        Ok(OwnedFd::from(fd))
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
        let who = self.requester(&header).await?;
        let (value, reply) = self
            .reserved_read(
                &namespace,
                &[key.as_str()],
                Room::inline(&self.svc),
                || self.svc.app.get(&who, namespace.clone(), key.clone()),
                |v: &Vec<u8>| v.len() as u64,
            )
            .await?;
        keep_reply(reply, &header, value.len() as u64);
        Ok(ByteBuf::from(value))
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
        let who = self.requester(&header).await?;
        // On a direct connection the memfd's size counts against the reply budget until
        // the peer has read the reply (its socket's unread bytes reach 0), not only until
        // it is written: memfds a peer leaves unread cannot pile up.
        let ((fd, size), reply) = self
            .reserved_read(
                &namespace,
                &[key.as_str()],
                Room::memfd(),
                || self.svc.app.get_fd(&who, namespace.clone(), key.clone()),
                |(_, size)| *size,
            )
            .await?;
        if let Some(reply) = reply {
            reply.keep_until_read(header.primary().serial_num().get(), size);
        }
        Ok((OwnedFd::from(fd), size))
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
        let args = parse_put_options(&options)?;
        let who = self.requester(&header).await?;
        Ok(self
            .svc
            .app
            .put_fd(&who, namespace, key, std::os::fd::OwnedFd::from(fd), args)
            .await?)
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
        let who = self.requester(&header).await?;
        Ok(self.svc.app.delete(&who, namespace, key).await?)
    }

    /// What is known of an entry without reading it: size, stored_size, node, created,
    /// last_access, hits (t/u) and expires (Unix seconds, 0 for never).
    #[zbus(out_args("info"))]
    async fn lookup(
        &self,
        namespace: String,
        key: String,
    ) -> Result<HashMap<String, Variant<'static>>, ServiceError> {
        let info = self.svc.app.lookup(namespace, key).await?;
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
        self.bus_only("Clear")?;
        let who = self.requester(&header).await?;
        Ok(self.svc.app.clear(&who, namespace).await?)
    }

    /// Take a read-only snapshot of every shard; returns its name (UTC time, e.g.
    /// 20261125T041500Z). polkit action org.opdbus.NumaCache.manage-cache.
    #[zbus(out_args("name"))]
    async fn create_snapshot(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, ServiceError> {
        self.bus_only("CreateSnapshot")?;
        let who = self.requester(&header).await?;
        Ok(self.svc.app.create_snapshot(&who).await?)
    }

    /// The names of the kept snapshots, oldest first. polkit action
    /// org.opdbus.NumaCache.manage-cache.
    #[zbus(out_args("names"))]
    async fn list_snapshots(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<String>, ServiceError> {
        self.bus_only("ListSnapshots")?;
        let who = self.requester(&header).await?;
        Ok(self.svc.app.list_snapshots(&who).await?)
    }

    /// Delete a snapshot by name; NotFound when there is none. polkit action
    /// org.opdbus.NumaCache.manage-cache.
    async fn delete_snapshot(
        &self,
        name: String,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), ServiceError> {
        self.bus_only("DeleteSnapshot")?;
        let who = self.requester(&header).await?;
        Ok(self.svc.app.delete_snapshot(&who, name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_options_are_checked_with_named_errors() {
        let opt = |name: &str, v: Variant<'_>| {
            HashMap::from([(name.to_string(), OwnedVariant::try_from(v).unwrap())])
        };
        let e = parse_put_options(&opt("colour", Variant::from(1u32)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("colour") && e.contains("ttl_seconds") && e.contains("sync"),
            "{e}"
        );
        assert_eq!(
            parse_put_options(&opt("node", Variant::from(-1i32)))
                .unwrap()
                .node,
            Some(-1)
        );
        assert!(
            parse_put_options(&opt("sync", Variant::from(true)))
                .unwrap()
                .sync
        );
        assert!(parse_put_options(&opt("sync", Variant::from(1u32))).is_err());
        assert!(parse_put_options(&opt("ttl_seconds", Variant::from(0u64))).is_err());
    }
}
