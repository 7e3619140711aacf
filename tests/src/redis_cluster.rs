//! A throwaway Redis Cluster on loopback ports: `primaries` primaries with `replicas`
//! replicas each, built with `redis-cli --cluster create`, with a short node timeout so a
//! killed primary's replica takes over within a few seconds.

use std::time::{Duration, Instant};

use crate::HarnessError;
use crate::redis::{RedisConfig, RedisServer};

/// The nodes of a cluster; dropping it kills them all and removes their directories.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Milliseconds without an answer after which the cluster counts a node as failed.
const NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    /// Starts the nodes (stopped with SIGKILL: a crash) and joins them into a cluster;
    /// returns once every node sees all slots served.
    pub fn start(primaries: usize, replicas: usize) -> Result<Self, HarnessError> {
        let config = RedisConfig {
            conf: vec![
                "cluster-enabled yes".into(),
                "cluster-config-file nodes.conf".into(),
                format!("cluster-node-timeout {NODE_TIMEOUT_MS}"),
                // A replica takes over however long it was cut off from its primary.
                "cluster-replica-validity-factor 0".into(),
                // The slots of other primaries keep serving while one fails over.
                "cluster-require-full-coverage no".into(),
            ],
            kill: true,
            ..RedisConfig::default()
        };
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            nodes.push(RedisServer::start_with(config.clone())?);
        }
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(nodes.iter().map(|n| format!("{}:{}", n.host, n.port)));
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes[0].cli(&args)?;
        let cluster = RedisCluster { nodes };
        cluster.wait_until(Duration::from_secs(30), |c| {
            c.nodes.iter().all(|n| {
                n.cli(&["CLUSTER", "INFO"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            }) && c
                .nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "SLOTS"]).is_ok_and(|s| !s.is_empty()))
        })?;
        Ok(cluster)
    }

    /// The seed-node URLs, comma-separated (the data plane's `redis.url` in cluster mode).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index in [`nodes`](Self::nodes) of the live primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> Result<usize, HarnessError> {
        let live = self.live()?;
        let slot: u16 = live
            .cli(&["CLUSTER", "KEYSLOT", key])?
            .parse()
            .map_err(|_| HarnessError("CLUSTER KEYSLOT did not answer a number".into()))?;
        let nodes = live.cli(&["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range.splitn(2, '-');
                match (
                    ends.next().and_then(|a| a.parse::<u16>().ok()),
                    ends.next().map(|b| b.parse::<u16>().ok()),
                ) {
                    (Some(a), None) => a == slot,
                    (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse::<u16>().ok());
                if let Some(i) = self.nodes.iter().position(|n| Some(n.port) == port) {
                    return Ok(i);
                }
            }
        }
        Err(HarnessError(format!("no live primary serves slot {slot}")))
    }

    /// The index in [`nodes`](Self::nodes) of a replica of primary `primary`.
    pub fn replica_of(&self, primary: usize) -> Result<usize, HarnessError> {
        let id = self.nodes[primary].cli(&["CLUSTER", "MYID"])?;
        let nodes = self.nodes[primary].cli(&["CLUSTER", "NODES"])?;
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[2].contains("slave") && f[3] == id)
            .filter_map(|f| f[1].split(['@', ':']).nth(1)?.parse::<u16>().ok())
            .find_map(|port| self.nodes.iter().position(|n| n.port == port))
            .ok_or_else(|| HarnessError(format!("node {primary} has no replica")))
    }

    /// Whether every replica of primary `primary` has applied all it wrote (equal
    /// replication offsets).
    pub fn in_sync(&self, primary: usize) -> Result<bool, HarnessError> {
        let field = |info: &str, name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let replica = self.replica_of(primary)?;
        let written = field(
            &self.nodes[primary].cli(&["INFO", "replication"])?,
            "master_repl_offset",
        );
        let applied = field(
            &self.nodes[replica].cli(&["INFO", "replication"])?,
            "slave_repl_offset",
        );
        Ok(written.is_some() && written == applied)
    }

    /// Kills node `i` (SIGKILL, like a crashed machine).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// A node that answers.
    fn live(&self) -> Result<&RedisServer, HarnessError> {
        self.nodes
            .iter()
            .find(|n| n.is_up())
            .ok_or_else(|| HarnessError("no cluster node answers".into()))
    }

    /// Polls `ok` every 50 ms until it holds, for at most `limit`.
    pub fn wait_until(
        &self,
        limit: Duration,
        ok: impl Fn(&Self) -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + limit;
        while !ok(self) {
            if Instant::now() > deadline {
                return Err(HarnessError(format!(
                    "the Redis cluster did not settle within {limit:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}
