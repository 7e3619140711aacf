//! Redis down costs almost nothing (issue 11 §4), with Redis killed for real: the circuit
//! breaker opens, cached endpoints answer correctly from PostgreSQL without waiting for
//! Redis, the breaker closes when Redis is back and the cache is used again; and the
//! submission lock of a holder that died is gone within seconds, not minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use edumind_dataplane::cache::LOCK_TTL;
use redis::AsyncCommands;
use serde_json::json;
use support::*;

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn gauge(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_when_redis_dies_and_closes_when_it_returns() {
    let mut redis = edumind_tests::RedisServer::start().unwrap();
    // A long command timeout: without a breaker every read would wait for it.
    let f = Fixture::start_with(redis.url(), |s| {
        s.redis.timeout_ms = 1000;
        s.redis.probe_ms = 200;
    })
    .await;
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
    let (s, expected, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(s, 200);
    let metrics = f.state.metrics.render(&[]);
    assert_eq!(gauge(&metrics, "edumind_cache_breaker_open"), Some(0));

    redis.stop();
    // The first failures open the breaker …
    let mut calls = 0;
    while !f.state.cache.breaker_open() {
        let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!((s, &v), (200, &expected));
        calls += 1;
        assert!(calls <= 10, "the breaker did not open");
    }
    let metrics = f.state.metrics.render(&[]);
    assert_eq!(gauge(&metrics, "edumind_cache_breaker_open"), Some(1));
    // … then every read goes straight to PostgreSQL: correct, and with no Redis wait (20
    // reads in well under one command timeout of 1 s).
    let t0 = Instant::now();
    for _ in 0..20 {
        let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!((s, &v), (200, &expected));
    }
    let twenty = t0.elapsed();
    assert!(
        twenty < Duration::from_millis(1000),
        "20 reads took {twenty:?} with the breaker open"
    );
    // A write while open: its invalidation is deferred, and the read after it is fresh.
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
    let (_, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(v["students"].as_array().unwrap().len(), 1);

    // Redis returns (still holding a value from before, as after a partition): the probe
    // closes the breaker, the pending invalidation runs first, the cache is used again.
    redis.restart().unwrap();
    let mut r = redis_conn(&redis.url()).await;
    // As the data plane stores it: the document and the rendered reply (a HASH).
    let old = expected.to_string();
    let _: () = r
        .hset_multiple(
            &key,
            &[
                ("doc", old.clone()),
                ("v", "old".to_owned()),
                ("r:all", format!("\"old\"\n{old}")),
            ],
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    while f.state.cache.breaker_open() {
        assert!(t0.elapsed() < Duration::from_secs(5), "breaker still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = f.state.metrics.render(&[]);
    assert_eq!(gauge(&metrics, "edumind_cache_breaker_open"), Some(0));
    let (_, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(
        v["students"].as_array().unwrap().len(),
        1,
        "stale value served after recovery"
    );
    let cached: Option<String> = r.hget(&key, "doc").await.unwrap();
    assert!(cached.is_some(), "the cache is used again");
    let (_, v2, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(v, v2);
}

#[tokio::test]
async fn a_dead_holders_submission_lock_expires_within_seconds() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let ta = f.a.school_id.unwrap();
    let (user, _) = f.a.students[0];
    let tok = token(user, 0, Some(ta));
    let (s, att, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts"),
            Some(&tok),
            Some(json!({"assessment_id": ASSESSMENT})),
        )
        .await;
    assert_eq!(s, 201);
    let id = att["id"].as_str().unwrap().to_owned();
    // A holder that crashed mid-submit: its lock is in Redis, taken the way the service
    // takes it, and no live process renews it.
    let lock_key = ckey(ta, &format!("lock:assessment:{id}"));
    let mut r = redis_conn(&edumind_tests::redis().await.url()).await;
    let taken: Option<String> = redis::cmd("SET")
        .arg(&lock_key)
        .arg("token-of-a-dead-process")
        .arg("NX")
        .arg("PX")
        .arg(LOCK_TTL.as_millis() as u64)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(taken.is_some());
    let url = format!("/v1/tenants/{ta}/attempts/{id}/submit");
    assert_eq!(f.call("POST", &url, Some(&tok), None).await.0, 409);
    let t0 = Instant::now();
    loop {
        let (s, v, _) = f.call("POST", &url, Some(&tok), None).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 409, "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the dead holder's lock still blocks after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("dead holder's lock gone after {:?}", t0.elapsed());

    // A live holder keeps its lock past the TTL by renewing it; dropping the token (the
    // holder's end) stops the renewal.
    let live_key = ckey(ta, "lock:assessment:live-holder");
    let held = f
        .state
        .cache
        .lock_acquire(&live_key, LOCK_TTL)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(LOCK_TTL + Duration::from_secs(1)).await;
    let owner: Option<String> = r.get(&live_key).await.unwrap();
    assert_eq!(
        owner.as_deref(),
        Some(&*held),
        "the live holder's lock expired"
    );
    drop(held);
    tokio::time::sleep(LOCK_TTL + Duration::from_secs(1)).await;
    let owner: Option<String> = r.get(&live_key).await.unwrap();
    assert_eq!(owner, None, "the lock outlived its holder");
}
