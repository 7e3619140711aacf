//! The connection to Redis: one server (standalone, possibly behind a TLS proxy or a
//! managed endpoint) or a Redis Cluster; plain or TLS (`rediss://`, verified against
//! the configured CA bundle or the system roots); with an ACL user and password.
//!
//! Nothing here logs or returns the URL or the password: errors are fixed sentences.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::config::{RedisMode, RedisSettings};

/// A cheap-to-clone handle: every clone shares the underlying connection(s).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

/// A cluster connection made on first use, so the service starts (and serves from
/// PostgreSQL) while the cluster is unreachable. A failed connect is retried by the next
/// command.
#[derive(Clone)]
pub(crate) struct LazyCluster {
    client: Arc<redis::cluster::ClusterClient>,
    conn: Arc<tokio::sync::OnceCell<ClusterConnection>>,
}

impl LazyCluster {
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// The node list and credentials of `settings`, with the settings' username and password
/// (when given) replacing any in the URLs.
fn node_infos(settings: &RedisSettings) -> Result<Vec<ConnectionInfo>, String> {
    let mut nodes = Vec::new();
    for url in settings
        .url
        .expose()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        // The parser's error could quote the URL: replaced by a fixed sentence.
        let info = url
            .into_connection_info()
            .map_err(|_| "invalid redis url (redis.url)".to_owned())?;
        let mut redis = info.redis_settings().clone();
        if let Some(user) = settings.username.as_deref().filter(|u| !u.is_empty()) {
            redis = redis.set_username(user);
        }
        if let Some(password) = settings
            .password
            .as_ref()
            .filter(|p| !p.expose().is_empty())
        {
            redis = redis.set_password(password.expose());
        }
        nodes.push(info.set_redis_settings(redis));
    }
    if nodes.is_empty() {
        return Err("redis.url is empty".into());
    }
    if settings.mode == RedisMode::Standalone && nodes.len() > 1 {
        return Err("redis.url lists several servers but redis.mode is standalone".into());
    }
    let tls = |i: &ConnectionInfo| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. });
    if settings.ca_file.is_some() && !nodes.iter().all(tls) {
        return Err("redis.ca_file is set but redis.url is not rediss:// (TLS)".into());
    }
    if nodes.iter().any(tls) && !nodes.iter().all(tls) {
        return Err("redis.url mixes rediss:// and redis:// servers".into());
    }
    Ok(nodes)
}

/// Builds the (lazy) connection. `ca` is the PEM bundle read from `settings.ca_file`.
pub(crate) fn connect(settings: &RedisSettings, ca: Option<Vec<u8>>) -> Result<Conn, String> {
    // rustls needs one process-wide crypto provider (the workspace uses ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = Duration::from_millis(settings.timeout_ms);
    let nodes = node_infos(settings)?;
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: ca.clone(),
    };
    match settings.mode {
        RedisMode::Standalone => {
            let info = nodes.into_iter().next().ok_or("redis.url is empty")?;
            let client = if ca.is_some() {
                redis::Client::build_with_tls(info, certs())
            } else {
                redis::Client::open(info)
            }
            .map_err(|_| "invalid redis settings (redis.url, redis.ca_file)".to_owned())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let conn = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|_| "cannot set up redis connection".to_owned())?;
            Ok(Conn::Single(conn))
        }
        RedisMode::Cluster => {
            let mut builder = ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // No transparent retry: a command that meets a topology change (a MOVED
                // after a failover, the connection to a dead primary reset) fails to the
                // cache, which takes it for a change of reachability and replays the
                // outboxes before it reads a tenant's keys again. Retried silently, the
                // first command after a failover would read from the promoted replica,
                // which may lack invalidations the old primary acknowledged (see
                // `Conn::del_replicated`). The client still refreshes its slot map.
                .retries(0)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if ca.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder
                .build()
                .map_err(|_| "invalid redis cluster settings (redis.url, redis.ca_file)")?;
            Ok(Conn::Cluster(LazyCluster {
                client: Arc::new(client),
                conn: Arc::new(tokio::sync::OnceCell::new()),
            }))
        }
    }
}

impl Conn {
    /// One `SCAN` step over the keys of the hash slot of `tag_key` (the node that holds a
    /// tenant's keys, in cluster mode; the only server otherwise).
    pub(crate) async fn scan_slot(
        &mut self,
        tag_key: &str,
        cursor: u64,
        pattern: &str,
    ) -> redis::RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(lazy) => {
                let mut c = lazy.get().await?;
                let route = Route::with_key(tag_key.as_bytes(), SlotAddr::Master);
                let value = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

/// How many replicas of the primary `cluster_nodes` (the output of `CLUSTER NODES` asked
/// of that primary) lists that the cluster does not consider failed: every one of them
/// could be promoted, so each must hold a delete before it counts as done. A replica
/// whose replication link is down but that is not (yet) failed is counted.
fn replicas_of_myself(cluster_nodes: &str) -> i64 {
    let lines: Vec<Vec<&str>> = cluster_nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let flags = |f: &Vec<&str>, flag: &str| f[2].split(',').any(|x| x == flag);
    let Some(me) = lines.iter().find(|f| flags(f, "myself")).map(|f| f[0]) else {
        return 0;
    };
    lines
        .iter()
        .filter(|f| f[3] == me && flags(f, "slave") && !flags(f, "fail"))
        .count() as i64
}

/// The replicas `ROLE` reports for a standalone primary (connected ones: a standalone
/// server knows no others).
fn replicas_of_role(role: &Value) -> i64 {
    match role {
        Value::Array(parts) => match (parts.first(), parts.get(2)) {
            (Some(Value::BulkString(kind)), Some(Value::Array(replicas)))
                if kind.as_slice() == b"master" =>
            {
                replicas.len() as i64
            }
            _ => 0,
        },
        _ => 0,
    }
}

impl Conn {
    /// Deletes `keys` (all in the hash slot of `tag_key`, i.e. one tenant's) and tells
    /// whether every replica that could take over from the primary holding them has the
    /// delete: `DEL` and `WAIT <replicas> <wait_ms>` go in one pipeline on the primary's
    /// connection, so the `WAIT` covers the `DEL`. Redis replicates asynchronously: a
    /// delete only the old primary saw is undone by a failover, and the cached value
    /// comes back. `false` when a replica has not acknowledged within `wait_ms` (a lagging
    /// or cut-off replica): the caller must not treat the invalidation as done.
    pub(crate) async fn del_replicated(
        &mut self,
        tag_key: &str,
        keys: Vec<String>,
        wait_ms: u64,
    ) -> redis::RedisResult<bool> {
        let replicas = match self {
            Conn::Single(c) => replicas_of_role(&redis::cmd("ROLE").query_async(c).await?),
            Conn::Cluster(lazy) => {
                let mut c = lazy.get().await?;
                let route = Route::with_key(tag_key.as_bytes(), SlotAddr::Master);
                let mut cmd = redis::cmd("CLUSTER");
                cmd.arg("NODES");
                let nodes = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                replicas_of_myself(&redis::from_redis_value::<String>(nodes)?)
            }
        };
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&keys).ignore();
        if replicas == 0 {
            pipe.query_async::<()>(self).await?;
            return Ok(true);
        }
        // WAIT 0 would block forever.
        pipe.cmd("WAIT").arg(replicas).arg(wait_ms.max(1));
        let (acked,): (i64,) = pipe.query_async(self).await?;
        Ok(acked >= replicas)
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_replicas_of_the_asked_primary_that_have_not_failed() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
r1 127.0.0.1:7004@17004 slave a1 0 0 1 connected
r2 127.0.0.1:7005@17005 slave,fail? a1 0 0 1 connected
r3 127.0.0.1:7006@17006 slave,fail a1 0 0 1 disconnected
r4 127.0.0.1:7007@17007 slave b1 0 0 2 connected";
        assert_eq!(replicas_of_myself(nodes), 2);
        assert_eq!(replicas_of_myself(""), 0);
    }

    #[test]
    fn a_standalone_primary_counts_its_connected_replicas() {
        let replica = Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::BulkString(b"6380".to_vec()),
            Value::BulkString(b"42".to_vec()),
        ]);
        let role = |kind: &[u8], replicas| {
            Value::Array(vec![
                Value::BulkString(kind.to_vec()),
                Value::Int(42),
                Value::Array(replicas),
            ])
        };
        assert_eq!(replicas_of_role(&role(b"master", vec![replica.clone()])), 1);
        assert_eq!(replicas_of_role(&role(b"master", vec![])), 0);
        assert_eq!(replicas_of_role(&role(b"slave", vec![replica])), 0);
    }
}
