//! The daemon's signals as typed events, and streams of the typed property views that
//! yield a fresh view after every change.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::names::{self, iface};
use crate::types::{CacheStatsInfo, Dict, NodeInfo, StrategyInfo, TopologyInfo};
use futures_util::{Stream, StreamExt, stream};
use std::collections::HashMap;
use std::pin::Pin;
use zbus::message::{Message, Type as MessageType};
use zbus::{MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};

/// A boxed stream of results, as every watch method returns.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

/// The object a property change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Object {
    /// `/org/opdbus/NumaCache`.
    Root,
    /// `/org/opdbus/NumaCache/nodeN`.
    Node(u32),
}

impl Object {
    fn of_path(path: &str) -> Option<Object> {
        if path == names::ROOT_PATH {
            Some(Object::Root)
        } else {
            names::node_of_path(path).map(Object::Node)
        }
    }
}

/// One signal of the daemon.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// `TopologyChanged(t generation, au node_ids)`.
    TopologyChanged {
        /// The new generation.
        generation: u64,
        /// The node ids now.
        node_ids: Vec<u32>,
    },
    /// `StrategyChanged(s name, i node_preference, s memory_policy)`.
    StrategyChanged {
        /// The strategy now active.
        name: String,
        /// The preferred node, if any.
        node_preference: Option<u32>,
        /// The memory policy now active.
        memory_policy: String,
    },
    /// `org.freedesktop.DBus.Properties.PropertiesChanged` on the root or a node object.
    PropertiesChanged {
        /// Which object.
        object: Object,
        /// Which interface, e.g. `org.opdbus.NumaCache.CacheStats`.
        interface: String,
        /// The new values by property name.
        changed: Dict,
        /// Properties that changed without their value in the signal.
        invalidated: Vec<String>,
    },
    /// A node appeared (ObjectManager `InterfacesAdded`).
    NodeAdded(u32),
    /// A node went away (ObjectManager `InterfacesRemoved`).
    NodeRemoved(u32),
}

impl Event {
    /// The event a signal message carries; `Ok(None)` for signals outside the contract.
    fn of_message(msg: &Message) -> Result<Option<Event>> {
        let h = msg.header();
        let (Some(path), Some(interface), Some(member)) = (h.path(), h.interface(), h.member())
        else {
            return Ok(None);
        };
        let body = msg.body();
        let event = match (interface.as_str(), member.as_str()) {
            (iface::TOPOLOGY, "TopologyChanged") => {
                let (generation, node_ids): (u64, Vec<u32>) = body.deserialize()?;
                Event::TopologyChanged {
                    generation,
                    node_ids,
                }
            }
            (iface::STRATEGY, "StrategyChanged") => {
                let (name, pref, memory_policy): (String, i32, String) = body.deserialize()?;
                Event::StrategyChanged {
                    name,
                    node_preference: u32::try_from(pref).ok(),
                    memory_policy,
                }
            }
            (iface::PROPERTIES, "PropertiesChanged") => {
                let Some(object) = Object::of_path(path.as_str()) else {
                    return Ok(None);
                };
                let (interface, changed, invalidated): (
                    String,
                    HashMap<String, OwnedVariant>,
                    Vec<String>,
                ) = body.deserialize()?;
                Event::PropertiesChanged {
                    object,
                    interface,
                    changed: Dict::from(changed),
                    invalidated,
                }
            }
            (iface::OBJECT_MANAGER, "InterfacesAdded") => {
                let (path, _): (
                    OwnedObjectPath,
                    HashMap<String, HashMap<String, OwnedVariant>>,
                ) = body.deserialize()?;
                match names::node_of_path(path.as_str()) {
                    Some(id) => Event::NodeAdded(id),
                    None => return Ok(None),
                }
            }
            (iface::OBJECT_MANAGER, "InterfacesRemoved") => {
                let (path, _): (OwnedObjectPath, Vec<String>) = body.deserialize()?;
                match names::node_of_path(path.as_str()) {
                    Some(id) => Event::NodeRemoved(id),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    /// True when this event may change the typed view of `interface` on `object`.
    fn touches(&self, object: Object, interface: &str) -> bool {
        match self {
            Event::PropertiesChanged {
                object: o,
                interface: i,
                ..
            } => *o == object && i == interface,
            Event::TopologyChanged { .. } => object == Object::Root && interface == iface::TOPOLOGY,
            Event::StrategyChanged { .. } => object == Object::Root && interface == iface::STRATEGY,
            Event::NodeAdded(id) | Event::NodeRemoved(id) => {
                object == Object::Node(*id)
                    || (object == Object::Root && interface == iface::TOPOLOGY)
            }
        }
    }
}

impl Client {
    /// Every signal of the daemon, typed, from now on (the match rule is in place when this
    /// returns, so nothing sent afterwards is missed).
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// use numa_cache_client::Event;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let mut events = client.events().await?;
    /// while let Some(event) = events.next().await {
    ///     if let Event::TopologyChanged { generation, .. } = event? {
    ///         println!("topology generation {generation}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn events(&self) -> Result<EventStream<Event>> {
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(names::BUS_NAME)
            .build()?;
        let messages = MessageStream::for_match_rule(rule, self.connection(), None).await?;
        Ok(Box::pin(messages.filter_map(|m| async move {
            match m {
                Ok(msg) => Event::of_message(&msg).transpose(),
                Err(e) => Some(Err(Error::from(e))),
            }
        })))
    }

    /// A stream that yields a view now and a fresh one after each change of `interface` on
    /// `object`.
    async fn watch<T, F, Fut>(
        &self,
        object: Object,
        interface: &'static str,
        read: F,
    ) -> Result<EventStream<T>>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let events = self.events().await?;
        let first = read(self.clone()).await;
        let client = self.clone();
        let updates = events.filter_map(move |e| {
            let client = client.clone();
            let read = read.clone();
            async move {
                match e {
                    Ok(ev) if ev.touches(object, interface) => Some(read(client).await),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        });
        Ok(Box::pin(stream::once(async move { first }).chain(updates)))
    }

    /// The Topology properties now, then again after every change.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let mut views = client.watch_topology().await?;
    /// while let Some(t) = views.next().await {
    ///     println!("generation {}", t?.generation);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn watch_topology(&self) -> Result<EventStream<TopologyInfo>> {
        self.watch(Object::Root, iface::TOPOLOGY, |c: Client| async move {
            c.topology().await
        })
        .await
    }

    /// The Strategy properties now, then again after every change.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let mut views = client.watch_strategy().await?;
    /// let now = views.next().await;
    /// # Ok(()) }
    /// ```
    pub async fn watch_strategy(&self) -> Result<EventStream<StrategyInfo>> {
        self.watch(Object::Root, iface::STRATEGY, |c: Client| async move {
            c.strategy().await
        })
        .await
    }

    /// The CacheStats properties now, then again after every (coalesced) change.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let mut views = client.watch_stats().await?;
    /// let now = views.next().await;
    /// # Ok(()) }
    /// ```
    pub async fn watch_stats(&self) -> Result<EventStream<CacheStatsInfo>> {
        self.watch(Object::Root, iface::CACHE_STATS, |c: Client| async move {
            c.stats().await
        })
        .await
    }

    /// Node `id`'s properties now, then again after every change; an error item once the
    /// node is gone.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn demo(client: numa_cache_client::Client) -> Result<(), numa_cache_client::Error> {
    /// let mut views = client.watch_node(0).await?;
    /// let now = views.next().await;
    /// # Ok(()) }
    /// ```
    pub async fn watch_node(&self, id: u32) -> Result<EventStream<NodeInfo>> {
        self.watch(Object::Node(id), iface::NODE, move |c: Client| async move {
            c.node(id).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_the_root_or_a_node() {
        assert_eq!(Object::of_path("/org/opdbus/NumaCache"), Some(Object::Root));
        assert_eq!(
            Object::of_path("/org/opdbus/NumaCache/node7"),
            Some(Object::Node(7))
        );
        assert_eq!(Object::of_path("/org/other"), None);
    }

    #[test]
    fn events_touch_only_their_own_views() {
        let e = Event::PropertiesChanged {
            object: Object::Root,
            interface: iface::CACHE_STATS.into(),
            changed: Dict::default(),
            invalidated: vec![],
        };
        assert!(e.touches(Object::Root, iface::CACHE_STATS));
        assert!(!e.touches(Object::Root, iface::TOPOLOGY));
        assert!(!e.touches(Object::Node(0), iface::NODE));
        let e = Event::NodeRemoved(3);
        assert!(e.touches(Object::Node(3), iface::NODE));
        assert!(!e.touches(Object::Node(2), iface::NODE));
    }
}
