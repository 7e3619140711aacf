//! Production Redis topologies (issue 13 §3), against real servers: a TLS-only Redis
//! with a throwaway CA and an ACL user allowed only the commands the data plane sends;
//! the same with a wrong CA or password (clear error, served from PostgreSQL); and a
//! Redis Cluster whose primary is killed under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edumind_dataplane::config::RedisMode;
use edumind_dataplane::secret::Secret;
use edumind_tests::{RedisCluster, RedisConfig, RedisServer, TestCa, TlsFiles};
use serde_json::json;
use support::*;

const ADMIN_PASSWORD: &str = "admin-pw-for-the-harness";
const DP_USER: &str = "edumind-dp";

/// The ACL of the data plane's user: its keys only, and only the commands it sends
/// (cache reads and writes, sessions, locks and their scripts, the generation scan, the
/// breaker's probe, the replicas count and `WAIT` of the outbox replay).
fn dp_acl(password: &str) -> String {
    format!(
        "user {DP_USER} on >{password} ~edumind:* resetchannels -@all +get +set +psetex \
         +getex +hget +hmget +hset +hlen +del +pexpire +evalsha +eval +script|load +scan \
         +ping +role +wait +cluster|nodes"
    )
}

/// A TLS-only server signed by `ca`, the default user disabled.
async fn tls_redis(ca: &TestCa, dp_password: &str) -> RedisServer {
    let config = RedisConfig {
        tls: Some(TlsFiles::from_ca(ca)),
        conf: vec![
            "user default off".into(),
            format!("user admin on >{ADMIN_PASSWORD} ~* &* +@all"),
            dp_acl(dp_password),
        ],
        admin: Some(("admin".into(), ADMIN_PASSWORD.into())),
        kill: false,
    };
    tokio::task::spawn_blocking(move || RedisServer::start_with(config))
        .await
        .unwrap()
        .unwrap()
}

async fn cli(server: &'static RedisServer, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.cli(&args).unwrap()
    })
    .await
    .unwrap()
}

fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

fn tls_settings(
    s: &mut edumind_dataplane::config::Settings,
    ca_file: PathBuf,
    password: &str,
    url: String,
) {
    s.redis.url = Secret::new(url);
    s.redis.username = Some(DP_USER.into());
    s.redis.password = Some(Secret::new(password));
    s.redis.ca_file = Some(ca_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_an_acl_user_serve_cache_sessions_and_locks() {
    let ca = tokio::task::spawn_blocking(|| TestCa::with_loopback_ip("redis test CA"))
        .await
        .unwrap()
        .unwrap();
    let password = edumind_tests::random_token(20);
    let redis = leak(tls_redis(&ca, &password).await);
    // Plain connections are refused: the port speaks only TLS.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(2),
        plain.get_multiplexed_async_connection(),
    )
    .await;
    assert!(!matches!(refused, Ok(Ok(_))), "a plain connection worked");

    let (ca_file, pw, url) = (ca.ca_cert(), password.clone(), redis.url());
    assert!(url.starts_with("rediss://"));
    let f = Fixture::start_with(url, |s| {
        tls_settings(s, ca_file, &pw, s.redis.url.expose().to_owned())
    })
    .await;
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));

    // Cache: a read stores the value (seen over TLS by the admin), a write invalidates it.
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
    let (s, before, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        cli(redis, &["EXISTS", &key]).await,
        "1",
        "value cached over TLS"
    );
    let one = vec![f.a.students[0].1];
    let (s, _, _) = f
        .call(
            "PUT",
            &roster,
            Some(&tok),
            Some(json!({"student_ids": one})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        cli(redis, &["EXISTS", &key]).await,
        "0",
        "invalidated over TLS"
    );
    let (_, after, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(after["students"].as_array().unwrap().len(), 1);
    assert_ne!(before, after);

    // Sessions.
    let (s, _, _) = f
        .call(
            "PUT",
            "/v1/session",
            Some(&tok),
            Some(json!({"theme": "dark"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v, _) = f.call("GET", "/v1/session", Some(&tok), None).await;
    assert_eq!((s, v), (200, json!({"theme": "dark"})));

    // Locks and their scripts (compare-and-delete, renewal).
    let lock_key = ckey(ta, "lock:assessment:tls-test");
    let held = f
        .state
        .cache
        .lock_acquire(&lock_key, Duration::from_secs(3))
        .await
        .unwrap()
        .expect("lock acquired");
    assert!(
        f.state
            .cache
            .lock_acquire(&lock_key, Duration::from_secs(3))
            .await
            .unwrap()
            .is_none(),
        "a held lock is exclusive"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        cli(redis, &["EXISTS", &lock_key]).await,
        "1",
        "renewed by its holder"
    );
    assert!(
        !f.state
            .cache
            .lock_release(&lock_key, "someone-else")
            .await
            .unwrap()
    );
    assert!(f.state.cache.lock_release(&lock_key, &held).await.unwrap());
    assert!(!f.state.cache.breaker_open());
    assert_eq!(f.state.cache.last_error(), None, "no command was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_password_fails_clearly_and_reads_come_from_postgres() {
    let ca = tokio::task::spawn_blocking(|| TestCa::with_loopback_ip("redis test CA"))
        .await
        .unwrap()
        .unwrap();
    let other_ca = tokio::task::spawn_blocking(|| TestCa::with_loopback_ip("some other CA"))
        .await
        .unwrap()
        .unwrap();
    let password = edumind_tests::random_token(20);
    let redis = leak(tls_redis(&ca, &password).await);

    for (ca_file, pw, expect) in [
        (other_ca.ca_cert(), password.clone(), "certificate"),
        (
            ca.ca_cert(),
            "not-the-password".to_owned(),
            "authentication failed",
        ),
    ] {
        let pw2 = pw.clone();
        let f = Fixture::start_with(redis.url(), |s| {
            tls_settings(s, ca_file, &pw2, s.redis.url.expose().to_owned());
            s.redis.probe_ms = 200;
        })
        .await;
        let ta = f.a.school_id.unwrap();
        let tok = token(f.a.teacher_user, 1, Some(ta));
        let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
        // Readers of a tenant whose outbox replay failed skip Redis for a second, so the
        // failures that open the breaker take a few seconds to add up.
        let t0 = Instant::now();
        while !f.state.cache.breaker_open() {
            let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
            assert_eq!(s, 200, "served from PostgreSQL: {v}");
            assert_eq!(v["students"].as_array().unwrap().len(), 2);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the breaker did not open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let why = f.state.cache.last_error().unwrap_or_default();
        eprintln!("redis error seen: {why}");
        assert!(why.contains(expect), "unclear error: {why}");
        assert!(!why.contains(&pw), "the password leaked into the error");
        // Never a silent fallback to plaintext or another user: nothing was cached.
        let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
        assert_eq!(cli(redis, &["EXISTS", &key]).await, "0");
        let (s, _, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!(s, 200);
    }
}

#[test]
fn the_redis_password_and_url_never_reach_debug_output() {
    let mut s = settings(
        PathBuf::from("/nonexistent"),
        "rediss://u:url-secret@h:1".into(),
    );
    s.redis.password = Some(Secret::new("acl-secret"));
    s.redis.mode = RedisMode::Cluster;
    let printed = format!("{s:?}");
    assert!(
        !printed.contains("url-secret") && !printed.contains("acl-secret"),
        "{printed}"
    );
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

/// The slot `key` hashes to, asked of a live node.
async fn keyslot(cluster: &Shared<RedisCluster>, key: &str) -> String {
    let (key, cluster) = (key.to_owned(), cluster.clone());
    tokio::task::spawn_blocking(move || {
        let cluster = cluster.lock().unwrap();
        let node = cluster.nodes.iter().find(|n| n.is_up()).unwrap();
        node.cli(&["CLUSTER", "KEYSLOT", &key]).unwrap()
    })
    .await
    .unwrap()
}

/// Three primaries with a replica each; the primary holding a tenant's keys is killed
/// while readers and a writer keep going. Reads never fail (PostgreSQL serves them while
/// the slot has no primary), the write made during the failover is never hidden by a
/// stale cached value, and once the replica has taken over the cache is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_under_load_serves_no_stale_value() {
    let test_started = Instant::now();
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap()
        .unwrap();
    let urls = cluster.urls();
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(cluster));
    let f = std::sync::Arc::new(
        Fixture::start_with(urls, |s| {
            s.redis.mode = RedisMode::Cluster;
            s.redis.probe_ms = 100;
        })
        .await,
    );
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));

    // Every key of the tenant is in one slot: cached values, sessions, locks, the
    // generation marker.
    let slot = keyslot(&cluster, &key).await;
    for seed in [
        "session:someone",
        "lock:assessment:x",
        "cache-generation",
        "student:y:progress",
    ] {
        assert_eq!(keyslot(&cluster, &ckey(ta, seed)).await, slot, "{seed}");
    }

    let (s, expected, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(s, 200);
    assert_eq!(expected["students"].as_array().unwrap().len(), 2);
    let primary = cluster.lock().unwrap().primary_of(&key).unwrap();
    let cached = |i: usize| {
        let (key, cluster) = (key.clone(), cluster.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                cluster.lock().unwrap().nodes[i]
                    .cli(&["EXISTS", &key])
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    // The client does not retry on its own (a command that meets a topology change
    // fails to the cache): on a busy machine the first reads may go to PostgreSQL.
    let t0 = Instant::now();
    while cached(primary).await != "1" {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the read was not cached in the cluster (last error: {:?})",
            f.state.cache.last_error()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (s, _, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!(s, 200);
    }
    // A session and a lock work through the cluster client too.
    let (s, _, _) = f
        .call("PUT", "/v1/session", Some(&tok), Some(json!({"k": 1})))
        .await;
    assert_eq!(s, 200);
    let lock_key = ckey(ta, "lock:assessment:cluster");
    let held = f
        .state
        .cache
        .lock_acquire(&lock_key, Duration::from_secs(6))
        .await
        .unwrap()
        .unwrap();
    assert!(f.state.cache.lock_release(&lock_key, &held).await.unwrap());

    // Load: two readers, each read recording when it started and what it saw.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (f, tok, roster, stop) = (f.clone(), tok.clone(), roster.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
                let n = v["students"].as_array().map_or(0, Vec::len);
                seen.push((started, s, n));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Kill the primary of the tenant's slot, then write while its replica is not yet
    // promoted.
    let killed_at = Instant::now();
    cluster.lock().unwrap().kill(primary);
    let one = vec![f.a.students[0].1];
    let (s, _, _) = f
        .call(
            "PUT",
            &roster,
            Some(&tok),
            Some(json!({"student_ids": one})),
        )
        .await;
    assert_eq!(s, 200, "writes go on during the failover");
    let written_at = Instant::now();

    // The replica takes over …
    let (cluster_ro, key2) = (cluster.clone(), key.clone());
    let new_primary = tokio::task::spawn_blocking(move || {
        let cluster_ro = cluster_ro.lock().unwrap();
        cluster_ro
            .wait_until(Duration::from_secs(20), |c| {
                c.primary_of(&key2).is_ok_and(|p| p != primary)
            })
            .unwrap();
        cluster_ro.primary_of(&key2).unwrap()
    })
    .await
    .unwrap();
    let promoted_in = killed_at.elapsed();

    // … and the cache is used again: the breaker closes and a read stores the new value
    // on the new primary.
    let t0 = Instant::now();
    loop {
        let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!(s, 200);
        assert_eq!(v["students"].as_array().unwrap().len(), 1, "stale read");
        if !f.state.cache.breaker_open() && cached(new_primary).await == "1" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the cache was not used again after the failover (breaker open: {}, last error: {:?})",
            f.state.cache.breaker_open(),
            f.state.cache.last_error()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_in = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    for r in readers {
        seen.extend(r.await.unwrap());
    }
    let during = seen
        .iter()
        .filter(|(t, _, _)| *t > killed_at && t.duration_since(killed_at) < promoted_in)
        .count();
    eprintln!(
        "failover: replica promoted after {promoted_in:?}, cache used again after {back_in:?}; \
         {} reads under load, {during} while the slot had no primary; test took {:?}",
        seen.len(),
        test_started.elapsed()
    );
    for (started, status, n) in &seen {
        assert_eq!(*status, 200, "a read failed during the failover");
        if *started > written_at {
            assert_eq!(*n, 1, "a read after the write saw the old roster");
        }
    }
    assert!(during > 0, "no read ran during the failover");
}

/// A delete the primary acknowledged but its replica never received, then the primary
/// dies and that replica takes over: the old value must not come back. The replication
/// link is cut (the primary refuses the replica's resync) just before the write, and the
/// periodic outbox replay runs before the primary is killed. Without the replay waiting
/// for the replica (`WAIT`), the replay removed the outbox row after deleting the key on
/// the primary alone, and the promoted replica served the old roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_promoted_replica_missed_is_not_lost() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap()
        .unwrap();
    let urls = cluster.urls();
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(cluster));
    let f = std::sync::Arc::new(
        Fixture::start_with(urls, |s| {
            s.redis.mode = RedisMode::Cluster;
            s.redis.probe_ms = 100;
        })
        .await,
    );
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
    let (s, before, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(s, 200);
    assert_eq!(before["students"].as_array().unwrap().len(), 2);

    // The cached value reaches the replica; then the replica is cut off: the primary
    // drops its replication link and refuses its resync.
    let on = |i: usize, args: &'static [&'static str]| {
        let cluster = cluster.clone();
        async move {
            tokio::task::spawn_blocking(move || cluster.lock().unwrap().nodes[i].cli(args))
                .await
                .unwrap()
        }
    };
    let (c, k) = (cluster.clone(), key.clone());
    let (primary, replica) = tokio::task::spawn_blocking(move || {
        let c = c.lock().unwrap();
        let primary = c.primary_of(&k).unwrap();
        let replica = c.replica_of(primary).unwrap();
        c.wait_until(Duration::from_secs(10), |c| {
            c.in_sync(primary).unwrap_or(false)
        })
        .unwrap();
        (primary, replica)
    })
    .await
    .unwrap();
    on(primary, &["ACL", "SETUSER", "default", "-psync", "-sync"])
        .await
        .unwrap();
    on(primary, &["CLIENT", "KILL", "TYPE", "replica"])
        .await
        .unwrap();

    // Readers under load.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (f, tok, roster, stop) = (f.clone(), tok.clone(), roster.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
                let n = v["students"].as_array().map_or(0, Vec::len);
                seen.push((started, s, n));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The write: its delete reaches the primary only. Then the replay the data plane
    // runs every few seconds, at once (deterministic).
    let one = vec![f.a.students[0].1];
    let (s, _, _) = f
        .call(
            "PUT",
            &roster,
            Some(&tok),
            Some(json!({"student_ids": one})),
        )
        .await;
    assert_eq!(s, 200);
    let written_at = Instant::now();
    f.state.cache.replay_known().await;
    let link = on(replica, &["INFO", "replication"]).await.unwrap();
    assert!(
        link.contains("master_link_status:down"),
        "the replica was not cut off: {link}"
    );

    // The primary dies; the replica, without the delete, takes over.
    cluster.lock().unwrap().kill(primary);
    let (c, k) = (cluster.clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        let c = c.lock().unwrap();
        c.wait_until(Duration::from_secs(20), |c| {
            c.primary_of(&k).is_ok_and(|p| p == replica)
        })
        .unwrap();
    })
    .await
    .unwrap();

    // Reads come back to the cache, and never with the old roster.
    let t0 = Instant::now();
    loop {
        let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!(s, 200);
        assert_eq!(
            v["students"].as_array().unwrap().len(),
            1,
            "the promoted replica served the value the write invalidated"
        );
        let (c, k) = (cluster.clone(), key.clone());
        let cached = tokio::task::spawn_blocking(move || {
            c.lock().unwrap().nodes[replica]
                .cli(&["EXISTS", &k])
                .unwrap()
        })
        .await
        .unwrap();
        // Stored again (by a read after the replay deleted it on the new primary).
        if cached == "1" && !f.state.cache.breaker_open() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the cache was not used again after the failover (last error: {:?})",
            f.state.cache.last_error()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    for r in readers {
        seen.extend(r.await.unwrap());
    }
    let after = seen.iter().filter(|(t, _, _)| *t > written_at).count();
    eprintln!("{} reads under load, {after} after the write", seen.len());
    for (started, status, n) in &seen {
        assert_eq!(*status, 200, "a read failed during the failover");
        if *started > written_at {
            assert_eq!(*n, 1, "a read after the write saw the old roster");
        }
    }
    assert!(after > 0, "no read ran after the write");
}
