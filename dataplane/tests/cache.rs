//! Cache-aside per spec section 4, observed in Redis itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

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

fn metric(text: &str, kind: &str, event: &str) -> u64 {
    let needle = format!("edumind_cache_events_total{{event=\"{event}\",kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn hits_misses_ttls_invalidation_and_redis_outage() {
    let mut redis = edumind_tests::RedisServer::start().unwrap();
    let f = Fixture::start(redis.url()).await;
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
    let mut r = redis_conn(&redis.url()).await;

    // Miss → stored with the roster TTL (10 min).
    let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!((s, v["students"].as_array().unwrap().len()), (200, 2));
    let ttl: i64 = r.ttl(&key).await.unwrap();
    assert!((590..=600).contains(&ttl), "roster TTL {ttl}");

    // Hit: change PostgreSQL behind the service's back; the cached value is served.
    let mut db = f.a.db.connect().await;
    sqlx::query("UPDATE classes SET student_ids = '[]' WHERE id = $1")
        .bind(f.a.class_id)
        .execute(&mut db)
        .await
        .unwrap();
    let (_, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(
        v["students"].as_array().unwrap().len(),
        2,
        "served from Redis"
    );

    // A write through the API invalidates: the key is gone, the next read is fresh.
    let one = f.a.students[0].1;
    let (s, _, _) = f
        .call(
            "PUT",
            &roster,
            Some(&tok),
            Some(json!({"student_ids": [one]})),
        )
        .await;
    assert_eq!(s, 200);
    let exists: bool = r.exists(&key).await.unwrap();
    assert!(!exists, "PUT must delete the cached roster");
    let (_, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(v["students"].as_array().unwrap().len(), 1);
    // The whole cached entry (document and rendered replies, a HASH).
    let stale: Vec<(String, Vec<u8>)> = r.hgetall(&key).await.unwrap();
    assert!(
        stale.iter().any(|(f, _)| f == "r:all"),
        "the reply is stored"
    );

    // Other TTLs from the spec.
    let (stu_user, stu) = f.a.students[0];
    let stok = token(stu_user, 0, Some(ta));
    for (path, k, lo, hi) in [
        (
            format!("/v1/tenants/{ta}/students/{stu}/progress"),
            ckey(ta, &format!("student:{stu}:progress")),
            290,
            300,
        ),
        (
            format!("/v1/tenants/{ta}/assessments/{ASSESSMENT}"),
            ckey(ta, &format!("assessment:{ASSESSMENT}:meta")),
            890,
            900,
        ),
        (
            format!("/v1/tenants/{ta}/courses/{COURSE}/questions"),
            ckey(ta, &format!("course:{COURSE}:questions")),
            3590,
            3600,
        ),
    ] {
        assert_eq!(f.call("GET", &path, Some(&stok), None).await.0, 200);
        let ttl: i64 = r.ttl(&k).await.unwrap();
        assert!((lo..=hi).contains(&ttl), "{k}: {ttl}");
    }

    // Redis down: reads still succeed from PostgreSQL, writes succeed too.
    redis.stop();
    let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(
        (s, v["students"].as_array().unwrap().len()),
        (200, 1),
        "{v}"
    );
    let both: Vec<_> = f.a.students.iter().map(|s| s.1).collect();
    let (s, _, _) = f
        .call(
            "PUT",
            &roster,
            Some(&tok),
            Some(json!({"student_ids": both})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        f.state.cache.pending_invalidations() > 0,
        "the missed invalidation is remembered"
    );
    let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!((s, v["students"].as_array().unwrap().len()), (200, 2));

    // Redis returns still holding the old value (as after a partition): it is never served.
    redis.restart().unwrap();
    let mut r = redis_conn(&redis.url()).await;
    let _: () = r.hset_multiple(&key, &stale).await.unwrap();
    // The circuit breaker opened meanwhile; its probe closes it once Redis answers.
    let t0 = std::time::Instant::now();
    while f.state.cache.breaker_open() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (s, v["students"].as_array().unwrap().len()),
        (200, 2),
        "stale roster served after recovery"
    );
    assert_eq!(f.state.cache.pending_invalidations(), 0);
    // Cached again once the tenant's outbox has been replayed: a replay that failed
    // during the outage (the membership check of a request met Redis down) is retried
    // after `REPLAY_RETRY` (1 s); until then reads come from PostgreSQL.
    let t0 = std::time::Instant::now();
    while !r.exists::<_, bool>(&key).await.unwrap() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "never cached again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (s, v, _) = f.call("GET", &roster, Some(&tok), None).await;
        assert_eq!((s, v["students"].as_array().unwrap().len()), (200, 2));
    }
    let cached: String = r.hget(&key, "doc").await.unwrap();
    assert!(
        cached.contains(&f.a.students[1].1.to_string()),
        "fresh value cached again"
    );
}

#[tokio::test]
async fn one_load_per_key_under_concurrency() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let ta = f.b.school_id.unwrap();
    let tok = token(f.b.teacher_user, 1, Some(ta));
    let path = format!("/v1/tenants/{ta}/courses/{COURSE}/questions");
    let calls = (0..20).map(|_| f.call("GET", &path, Some(&tok), None));
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.0 == 200));
    let text = f.state.metrics.render(&[]);
    assert_eq!(metric(&text, "questions", "miss"), 1, "{text}");
    assert_eq!(metric(&text, "questions", "hit"), 19, "{text}");
}

#[tokio::test]
async fn submit_invalidates_progress_and_lock_is_owner_only() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let ta = f.a.school_id.unwrap();
    let (user, stu) = f.a.students[1];
    let tok = token(user, 0, Some(ta));
    let progress = format!("/v1/tenants/{ta}/students/{stu}/progress");
    let (_, v, _) = f.call("GET", &progress, Some(&tok), None).await;
    assert_eq!(v["xp_points"], 0);
    let (_, att, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts"),
            Some(&tok),
            Some(json!({"assessment_id": ASSESSMENT})),
        )
        .await;
    let id = att["id"].as_str().unwrap().to_owned();
    f.call(
        "POST",
        &format!("/v1/tenants/{ta}/attempts/{id}/responses"),
        Some(&tok),
        Some(json!({"question_id": Q2, "answer": "42"})),
    )
    .await;
    // Someone else holds the submission lock: refused without touching the attempt.
    let lock_key = ckey(ta, &format!("lock:assessment:{id}"));
    let other = f
        .state
        .cache
        .lock_acquire(&lock_key, std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        f.call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts/{id}/submit"),
            Some(&tok),
            None
        )
        .await
        .0,
        409
    );
    assert!(
        !f.state
            .cache
            .lock_release(&lock_key, "not-the-owner")
            .await
            .unwrap()
    );
    assert!(f.state.cache.lock_release(&lock_key, &other).await.unwrap());
    let (s, _, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts/{id}/submit"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (_, v, _) = f.call("GET", &progress, Some(&tok), None).await;
    assert_eq!(v["xp_points"], 10, "progress cache invalidated by submit");
    assert_eq!(v["attempts_completed"], 1);
}

#[tokio::test]
async fn sessions_slide_and_end() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let user = f.a.teacher_user;
    let tok = token(user, 1, f.a.school_id);
    let key = ckey(f.a.school_id.unwrap(), &format!("session:Teacher:{user}"));
    let mut r = redis_conn(&edumind_tests::redis().await.url()).await;
    assert_eq!(f.call("GET", "/v1/session", Some(&tok), None).await.0, 404);
    assert_eq!(
        f.call(
            "PUT",
            "/v1/session",
            Some(&tok),
            Some(json!({"theme": "dark"}))
        )
        .await
        .0,
        200
    );
    let _: () = r.pexpire(&key, 60_000).await.unwrap();
    let (s, v, _) = f.call("GET", "/v1/session", Some(&tok), None).await;
    assert_eq!((s, v), (200, json!({"theme": "dark"})));
    // Tokens with the same `sub` and another role are other sessions: a self-service
    // Student's, and (platform roles share a tenant) a CourseAdmin's and a SystemAdmin's.
    let platform = uuid::Uuid::new_v4();
    let course_admin = token(platform, 3, None);
    let system_admin = token(platform, 5, None);
    assert_eq!(
        f.call(
            "PUT",
            "/v1/session",
            Some(&system_admin),
            Some(json!({"a": 1}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        f.call("GET", "/v1/session", Some(&course_admin), None)
            .await
            .0,
        404,
        "a CourseAdmin token read the SystemAdmin session of the same sub"
    );
    let ttl: i64 = r.ttl(&key).await.unwrap();
    assert!(
        ttl > 1790,
        "reading slides the expiry back to 30 minutes: {ttl}"
    );
    assert_eq!(
        f.call("DELETE", "/v1/session", Some(&tok), None).await.0,
        204
    );
    let exists: bool = r.exists(&key).await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn database_alone_allows_one_submission_when_redis_is_down() {
    let mut redis = edumind_tests::RedisServer::start().unwrap();
    let f = Fixture::start(redis.url()).await;
    redis.stop();
    let ta = f.a.school_id.unwrap();
    let (user, stu) = f.a.students[0];
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
    f.call(
        "POST",
        &format!("/v1/tenants/{ta}/attempts/{id}/responses"),
        Some(&tok),
        Some(json!({"question_id": Q1, "answer": "B"})),
    )
    .await;
    let url = format!("/v1/tenants/{ta}/attempts/{id}/submit");
    // Hold the attempt row so that every submission passes its status check first and
    // then queues on the UPDATE: only the database's conditional UPDATE can stop them.
    let mut holder = f.a.db.connect().await;
    let mut hold = sqlx::Connection::begin(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM student_assessments WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *hold)
        .await
        .unwrap();
    let submits =
        futures_util::future::join_all((0..4).map(|_| f.call("POST", &url, Some(&tok), None)));
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        hold.commit().await.unwrap();
    };
    let t0 = std::time::Instant::now();
    let (results, ()) = tokio::join!(submits, release);
    // An abandoned transaction must not keep the losers waiting (it used to, until the
    // idle reaper closed its connection a minute later).
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
    let ok = results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(
        ok,
        1,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|r| r.0 == 200 || r.0 == 409));
    let mut db = f.a.db.connect().await;
    let xp: i32 = sqlx::query_scalar("SELECT xp_points FROM students WHERE id = $1")
        .bind(stu)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(xp, 10, "XP awarded once");
}

#[tokio::test]
async fn content_and_class_writes_invalidate_their_cached_values() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let ta = f.a.school_id.unwrap();
    let teacher = token(f.a.teacher_user, 1, Some(ta));
    let content = token(uuid::Uuid::new_v4(), 3, None);
    let school_admin = token(f.a.admin_user, 2, Some(ta));
    let mut r = redis_conn(&edumind_tests::redis().await.url()).await;
    let questions = format!("/v1/tenants/{ta}/courses/{COURSE}/questions");
    let questions_key = ckey(ta, &format!("course:{COURSE}:questions"));
    let meta = format!("/v1/tenants/{ta}/assessments/{ASSESSMENT}");
    let meta_key = ckey(ta, &format!("assessment:{ASSESSMENT}:meta"));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let roster_key = ckey(ta, &format!("class:{}:roster", f.a.class_id));

    // Load all three into Redis.
    for path in [&questions, &meta, &roster] {
        assert_eq!(f.call("GET", path, Some(&teacher), None).await.0, 200);
    }
    for key in [&questions_key, &meta_key, &roster_key] {
        let n: i64 = r.exists(key).await.unwrap();
        assert_eq!(n, 1, "{key} cached");
    }

    // A question write drops the course's question list; the next read has the change.
    let body = json!({"course_id": COURSE, "question_text": "changed?", "question_type": 0,
        "subject": 1, "grade_level": 8, "difficulty_level": 1, "correct_answer": "\"B\"", "points": 10});
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/questions/{Q1}"),
            Some(&content),
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let n: i64 = r.exists(&questions_key).await.unwrap();
    assert_eq!(n, 0, "question write must invalidate {questions_key}");
    let (_, v, _) = f.call("GET", &questions, Some(&teacher), None).await;
    assert_eq!(v["items"][0]["question_text"], "changed?");

    // A course write drops it too (the course itself may have been cached as missing).
    let n: i64 = r.exists(&questions_key).await.unwrap();
    assert_eq!(n, 1, "reloaded");
    let body = json!({"name": "Algebra II", "code": "ALG8", "subject": 1, "grade_level": 8, "description": "d"});
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/courses/{COURSE}"),
            Some(&content),
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let n: i64 = r.exists(&questions_key).await.unwrap();
    assert_eq!(n, 0, "course write must invalidate {questions_key}");

    // An assessment write drops its metadata.
    let body = json!({"course_id": COURSE, "title": "Renamed", "assessment_type": 0, "subject": 1,
        "grade_level": 8, "question_ids": [Q1, Q2, Q3], "total_points": 30, "passing_score_percentage": 60});
    let (s, v, _) = f.call("PUT", &meta, Some(&content), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    let n: i64 = r.exists(&meta_key).await.unwrap();
    assert_eq!(n, 0, "assessment write must invalidate {meta_key}");
    let (_, v, _) = f.call("GET", &meta, Some(&teacher), None).await;
    assert_eq!(v["title"], "Renamed");

    // A class write drops its roster (which carries the class name and code).
    let body = json!({"name": "Eight A", "code": "8A", "grade_level": 8, "subject": 1, "academic_year": "2025-2026"});
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/classes/{}", f.a.class_id),
            Some(&school_admin),
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let n: i64 = r.exists(&roster_key).await.unwrap();
    assert_eq!(n, 0, "class write must invalidate {roster_key}");
    let (_, v, _) = f.call("GET", &roster, Some(&teacher), None).await;
    assert_eq!(
        (v["name"].as_str(), v["students"].as_array().map(Vec::len)),
        (Some("Eight A"), Some(2))
    );
}

/// Issue 15 §1: a hit sends the stored reply bytes as they are, with the stored ETag, and
/// answers `If-None-Match` from that ETag (304, no body); each visibility has its own
/// stored variant (students get questions without answers), and one write drops them all.
#[tokio::test]
async fn hits_send_stored_bytes_and_304_from_the_stored_etag() {
    let redis = edumind_tests::redis().await;
    let f = Fixture::start(redis.url()).await;
    let ta = f.a.school_id.unwrap();
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    let key = ckey(ta, &format!("class:{}:roster", f.a.class_id));
    let mut r = redis_conn(&redis.url()).await;

    let (s, _, h) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!(s, 200);
    let etag = h["etag"].to_str().unwrap().to_owned();
    let (s, _, h) = f.call("GET", &roster, Some(&tok), None).await;
    assert_eq!((s, h["etag"].to_str().unwrap()), (200, etag.as_str()));

    // Replace the stored reply behind the service's back: what is stored is what is sent,
    // and the ETag compared is the stored one (not a hash of the body).
    let planted = r#"{"class_id":"planted","code":"P","name":"P","students":[]}"#;
    let _: () = r
        .hset(&key, "r:all", format!("\"planted\"\n{planted}"))
        .await
        .unwrap();
    let res = f
        .http
        .get(f.url(&roster))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["etag"], "\"planted\"");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(
        res.text().await.unwrap(),
        planted,
        "stored bytes sent as is"
    );
    let res = f
        .http
        .get(f.url(&roster))
        .bearer_auth(&tok)
        .header("if-none-match", "\"other\", \"planted\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 304);
    assert_eq!(res.headers()["etag"], "\"planted\"");
    assert!(res.bytes().await.unwrap().is_empty());
    let res = f
        .http
        .get(f.url(&roster))
        .bearer_auth(&tok)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "the old ETag is not the stored one"
    );

    // Variants: the teacher's and the student's question pages are stored side by side;
    // the student's has no answers, and a question write drops both with the one key.
    let questions = format!("/v1/tenants/{ta}/courses/{COURSE}/questions");
    let qkey = ckey(ta, &format!("course:{COURSE}:questions"));
    let stok = token(f.a.students[0].0, 0, Some(ta));
    for _ in 0..2 {
        let (s, v, _) = f.call("GET", &questions, Some(&tok), None).await;
        assert_eq!(s, 200);
        assert!(v["items"][0].get("correct_answer").is_some(), "{v}");
        let (s, v, _) = f.call("GET", &questions, Some(&stok), None).await;
        assert_eq!(s, 200);
        assert!(v["items"][0].get("correct_answer").is_none(), "{v}");
    }
    let fields: Vec<String> = r.hkeys(&qkey).await.unwrap();
    assert!(fields.contains(&"r:staff::50".to_owned()), "{fields:?}");
    assert!(fields.contains(&"r:student::50".to_owned()), "{fields:?}");
    let content = token(uuid::Uuid::new_v4(), 3, None);
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/questions/{Q1}"),
            Some(&content),
            Some(
                json!({"course_id": COURSE, "question_text": "new?", "question_type": 0,
                "subject": 1, "grade_level": 8, "difficulty_level": 1, "correct_answer": "C",
                "points": 10}),
            ),
        )
        .await;
    assert!(s < 300, "{s} {v}");
    let n: i64 = r.exists(&qkey).await.unwrap();
    assert_eq!(n, 0, "one DEL drops every variant");
    let (_, v, _) = f.call("GET", &questions, Some(&stok), None).await;
    assert_eq!(v["items"][0]["question_text"], "new?");
}

/// A variant rendered from a stored document is stored only while that document is
/// still the stored one: an invalidation between reading the document and storing the
/// variant leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_of_an_invalidated_document_is_not_stored() {
    let redis = edumind_tests::redis().await;
    let f = Fixture::start(redis.url()).await;
    let ta = f.a.school_id.unwrap();
    let key = ckey(ta, "class:race:roster");
    let mut r = redis_conn(&redis.url()).await;
    // The tenant's first read replays its outbox and records its generation (dropping
    // its keys): done before the document is planted.
    let tok = token(f.a.teacher_user, 1, Some(ta));
    let roster = format!("/v1/tenants/{ta}/classes/{}/roster", f.a.class_id);
    assert_eq!(f.call("GET", &roster, Some(&tok), None).await.0, 200);
    let _: () = r
        .hset_multiple(&key, &[("doc", "\"old\""), ("v", "1")])
        .await
        .unwrap();
    let url = redis.url();
    let cache = &f.state.cache;
    let render = |doc: &String| {
        // The write's invalidation lands while this variant is being rendered.
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: i64 = redis::Commands::del(&mut c, &key).unwrap();
        Ok::<_, ()>(edumind_dataplane::cache::Stored::found(doc.clone()))
    };
    let got = cache
        .reply_or_load(
            "roster",
            || key.clone(),
            "all",
            std::time::Duration::from_secs(60),
            || async { Ok::<String, ()>("\"fresh\"".to_owned()) },
            render,
            String::clone,
            |t: &str| Ok(t.to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(got, edumind_dataplane::cache::Stored::found("\"old\""));
    let n: i64 = r.exists(&key).await.unwrap();
    assert_eq!(n, 0, "a variant of the invalidated document was stored");
}
