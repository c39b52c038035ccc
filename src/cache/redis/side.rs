//! Plain connections to each cluster master beside fred's cluster client, so that invalidations are told and heard while a master is dead or frozen.
//!
//! fred's cluster client reconnects as a whole: when a master dies, every
//! reconnect tries all the masters of the slot map and fails until the
//! dead one has left it (its replica promoted: the cluster's node timeout
//! and an election, 3–4 s with a 2 s node timeout), and meanwhile no
//! command goes to any node. Pub/sub needs just one node, since Redis
//! Cluster forwards every PUBLISH to all nodes, so in a cluster each pod
//! keeps, per master, one plain (non-cluster) connection to publish
//! through and one subscribed to the invalidation channel, each reconnected
//! by fred on its own: a dead or frozen master takes only its own with it,
//! and the pod still hears every announcement through the others (twice or
//! more when all are up, which [`super::super::coherence`] ignores by
//! number, and which drop an already dropped key).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, Config as ClientConfig, ServerConfig};
use fred::types::config::Server;

use super::Heard;

/// Where heard announcements go.
pub(super) type Listener = Arc<dyn Fn(Heard) + Send + Sync>;

/// The connections to one master.
struct Node {
    publisher: fred::prelude::Client,
    subscriber: SubscriberClient,
    /// Set when the node is no longer a master: its listener stops.
    gone: Arc<AtomicBool>,
}

/// Per master of the slot map, a connection to publish through and one to
/// hear on.
pub(super) struct Side {
    /// The cluster client's settings (credentials, TLS), with the servers
    /// replaced by one node per connection.
    config: ClientConfig,
    command_timeout: Duration,
    connect_timeout: Duration,
    heard: Listener,
    nodes: Mutex<HashMap<Server, Node>>,
}

impl Side {
    pub(super) fn new(
        config: ClientConfig,
        command_timeout: Duration,
        connect_timeout: Duration,
        heard: Listener,
    ) -> Side {
        Side {
            config,
            command_timeout,
            connect_timeout,
            heard,
            nodes: Mutex::default(),
        }
    }

    /// Keeps connections to each of `masters` (the slot map's), closing
    /// those to nodes that are no longer masters; the masters of a cluster
    /// are few, so are these.
    pub(super) fn follow(&self, masters: &[Server]) {
        let Ok(mut nodes) = self.nodes.lock() else {
            return;
        };
        nodes.retain(|server, node| {
            let keep = masters.contains(server);
            if !keep {
                node.gone.store(true, Ordering::Relaxed);
                let (publisher, subscriber) = (node.publisher.clone(), node.subscriber.clone());
                let timeout = self.connect_timeout;
                // Bounded: a dead node must not keep this task.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, publisher.quit()).await;
                    let _ = tokio::time::timeout(timeout, subscriber.quit()).await;
                });
            }
            keep
        });
        for server in masters {
            if nodes.contains_key(server) {
                continue;
            }
            let mut config = self.config.clone();
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
            let builder = super::builder(config, self.command_timeout, self.connect_timeout);
            let (Ok(publisher), Ok(subscriber)) =
                (builder.build(), builder.build_subscriber_client())
            else {
                continue;
            };
            // The connection task lives as long as the client; fred
            // reconnects it on its own.
            drop(publisher.connect());
            let gone = Arc::new(AtomicBool::new(false));
            tokio::spawn(super::listen_for_invalidations(
                subscriber.clone(),
                self.heard.clone(),
                gone.clone(),
            ));
            nodes.insert(
                server.clone(),
                Node {
                    publisher,
                    subscriber,
                    gone,
                },
            );
        }
    }

    /// The connections to publish through that are up, as (`host:port`,
    /// client), those to nodes in `last` (failing, or the counter's) after
    /// the others.
    pub(super) fn up(&self, last: &[String]) -> Vec<(String, fred::prelude::Client)> {
        let Ok(nodes) = self.nodes.lock() else {
            return Vec::new();
        };
        let mut up: Vec<(String, fred::prelude::Client)> = nodes
            .iter()
            .filter(|(_, node)| node.publisher.is_connected())
            .map(|(server, node)| (server.to_string(), node.publisher.clone()))
            .collect();
        up.sort_by_key(|(node, _)| last.contains(node));
        up
    }
}
