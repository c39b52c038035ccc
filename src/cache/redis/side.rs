//! Plain connections to each cluster master beside fred's cluster client, so that a pod can tell the others of an invalidation while that client is down.
//!
//! fred's cluster client reconnects as a whole: when a master dies, every
//! reconnect tries all the masters of the slot map and fails until the
//! dead one has left it (its replica promoted: the cluster's node timeout
//! and an election, 3–4 s with a 2 s node timeout), and meanwhile no
//! command goes to any node. A PUBLISH needs just one node, since Redis
//! Cluster forwards it to all, so each pod also keeps one plain
//! (non-cluster) connection per master, each reconnected by fred on its
//! own: a dead master takes only its own connection with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::{ClientLike, Config as ClientConfig, ServerConfig};
use fred::types::config::Server;

/// One plain connection per master of the slot map.
pub(super) struct Side {
    /// The cluster client's settings (credentials, TLS, deadlines), with
    /// the servers replaced by one node per connection.
    config: ClientConfig,
    command_timeout: Duration,
    connect_timeout: Duration,
    connections: Mutex<HashMap<Server, fred::prelude::Client>>,
}

impl Side {
    pub(super) fn new(
        config: ClientConfig,
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> Side {
        Side {
            config,
            command_timeout,
            connect_timeout,
            connections: Mutex::default(),
        }
    }

    /// Keeps one connection to each of `masters` (the slot map's), closing
    /// those to nodes that are no longer masters; the nodes of a cluster
    /// are few, so are these.
    pub(super) fn follow(&self, masters: &[Server]) {
        let Ok(mut connections) = self.connections.lock() else {
            return;
        };
        connections.retain(|server, client| {
            let keep = masters.contains(server);
            if !keep {
                let (client, timeout) = (client.clone(), self.connect_timeout);
                // Bounded: a dead node must not keep this task.
                tokio::spawn(async move { tokio::time::timeout(timeout, client.quit()).await });
            }
            keep
        });
        for server in masters {
            if connections.contains_key(server) {
                continue;
            }
            let mut config = self.config.clone();
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
            let Ok(client) =
                super::builder(config, self.command_timeout, self.connect_timeout).build()
            else {
                continue;
            };
            // The connection task lives as long as the client; fred
            // reconnects it on its own.
            drop(client.connect());
            connections.insert(server.clone(), client);
        }
    }

    /// The connections that are up, as (`host:port`, client), those to
    /// nodes in `last` (failing, or the counter's) after the others.
    pub(super) fn up(&self, last: &[String]) -> Vec<(String, fred::prelude::Client)> {
        let Ok(connections) = self.connections.lock() else {
            return Vec::new();
        };
        let mut up: Vec<(String, fred::prelude::Client)> = connections
            .iter()
            .filter(|(_, client)| client.is_connected())
            .map(|(server, client)| (server.to_string(), client.clone()))
            .collect();
        up.sort_by_key(|(node, _)| last.contains(node));
        up
    }
}
