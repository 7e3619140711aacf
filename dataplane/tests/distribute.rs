//! Global content distribution: the catalogue authored in the self-service database is
//! upserted by id into both school databases (real PostgreSQL, real Redis).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use edumind_dataplane::distribute::{self, Applied, Counts};
use edumind_dataplane::tenants::TenantId;
use serde_json::{Value, json};
use support::*;
use uuid::Uuid;

async fn run(f: &Fixture) -> Vec<(String, Option<Applied>, Option<String>)> {
    let ss = f.state.directory.get(&TenantId::SelfService).unwrap();
    let bundle = distribute::export(&f.state.pools, &ss).await.unwrap();
    let targets = distribute::targets(f.state.directory.all(), Some(TenantId::SelfService));
    assert_eq!(targets.len(), 2);
    distribute::distribute(&f.state.pools, &f.state.cache, targets, &bundle, 2)
        .await
        .into_iter()
        .map(|r| (r.tenant, r.applied, r.error))
        .collect()
}

fn counts(inserted: u64, updated: u64) -> Counts {
    Counts { inserted, updated }
}

#[tokio::test]
async fn catalogue_reaches_every_school_once_and_changes_propagate() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let admin = token(Uuid::new_v4(), 5, None);
    let (ta, tb) = (f.a.school_id.unwrap(), f.b.school_id.unwrap());
    let geo = Uuid::new_v4();
    let q_geo = Uuid::new_v4();
    let quiz = Uuid::new_v4();
    // Author in the self-service database: a new course, question and assessment, and a
    // changed text of Q1 (seeded identically everywhere).
    let put = async |path: String, body: Value| {
        let (s, v, _) = f.call("PUT", &path, Some(&admin), Some(body)).await;
        assert_eq!(s, 200, "{path}: {v}");
    };
    put(
        format!("/v1/tenants/selfservice/courses/{geo}"),
        json!({"name": "Geometry", "code": "GEO9", "subject": 1, "grade_level": 9,
               "description": "shapes", "topics": ["angles"], "metadata": {"board": "x"}}),
    )
    .await;
    put(
        format!("/v1/tenants/selfservice/questions/{q_geo}"),
        json!({"course_id": geo, "question_text": "Angles of a triangle?", "question_type": 0,
               "subject": 1, "grade_level": 9, "difficulty_level": 1, "correct_answer": "180"}),
    )
    .await;
    put(
        format!("/v1/tenants/selfservice/assessments/{quiz}"),
        json!({"course_id": geo, "title": "Geo quiz", "assessment_type": 0, "subject": 1,
               "grade_level": 9, "question_ids": [q_geo], "total_points": 1}),
    )
    .await;
    put(
        format!("/v1/tenants/selfservice/questions/{Q1}"),
        json!({"course_id": COURSE, "question_text": "q? (revised)", "question_type": 0,
               "subject": 1, "grade_level": 8, "difficulty_level": 1,
               "correct_answer": "\"B\"", "points": 10}),
    )
    .await;
    // A school's cached question list, to prove the run invalidates it.
    let list_a = format!("/v1/tenants/{ta}/courses/{COURSE}/questions");
    let (s, before, _) = f.call("GET", &list_a, Some(&admin), None).await;
    assert_eq!(s, 200);
    assert!(!before.to_string().contains("revised"));
    // School b has a local course holding the code GEO9: b fails alone, a proceeds.
    let mut b_conn = f.b.db.connect().await;
    exec(&mut b_conn, "INSERT INTO courses (id, name, code, subject, grade_level, description) VALUES (gen_random_uuid(), 'Local', 'GEO9', 1, 9, 'd')".into()).await;

    let first = run(&f).await;
    let a = first.iter().find(|r| r.0 == ta.to_string()).unwrap();
    let b = first.iter().find(|r| r.0 == tb.to_string()).unwrap();
    assert_eq!(
        a.1.clone().unwrap(),
        Applied {
            courses: counts(1, 0),
            questions: counts(1, 1),
            assessments: counts(1, 0)
        },
        "only the new rows and the revised question are written"
    );
    assert!(b.2.as_deref().unwrap().contains("ix_courses_code"), "{b:?}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM questions WHERE id = $1")
        .bind(q_geo)
        .fetch_one(&mut b_conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "b's failed run rolled back as a whole");
    let (_, after, _) = f.call("GET", &list_a, Some(&admin), None).await;
    assert!(
        after.to_string().contains("q? (revised)"),
        "cache invalidated: {after}"
    );
    // Counters are the school's own: not copied, not reset.
    let mut a_conn = f.a.db.connect().await;
    exec(
        &mut a_conn,
        format!("UPDATE questions SET times_answered = 7 WHERE id = '{Q1}'"),
    )
    .await;

    // b resolves its conflict; the next run completes b and changes nothing in a.
    exec(
        &mut b_conn,
        "UPDATE courses SET code = 'LOCAL1' WHERE code = 'GEO9'".into(),
    )
    .await;
    let second = run(&f).await;
    for (tenant, applied, error) in &second {
        assert_eq!(error, &None, "{tenant}");
        let expected = if *tenant == ta.to_string() {
            Applied::default()
        } else {
            Applied {
                courses: counts(1, 0),
                questions: counts(1, 1),
                assessments: counts(1, 0),
            }
        };
        assert_eq!(applied.clone().unwrap(), expected, "{tenant}");
    }
    let times: i32 = sqlx::query_scalar("SELECT times_answered FROM questions WHERE id = $1")
        .bind(Q1)
        .fetch_one(&mut a_conn)
        .await
        .unwrap();
    assert_eq!(times, 7);

    // The command-line job over the same tenants: a third run writes nothing anywhere.
    let config = f.dir.path().join("dp.toml");
    std::fs::write(
        &config,
        format!(
            "tenants_dir = {:?}\n[redis]\nurl = {:?}\n[auth]\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\nhs256_secret = {HS_SECRET:?}\n",
            f.dir.path(),
            f.state.settings.redis.url.expose()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-dataplane"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "distribute-content",
            "--from",
            "selfservice",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let zero = json!({"inserted": 0, "updated": 0});
    for l in &lines {
        assert_eq!(
            l["applied"],
            json!({"courses": zero, "questions": zero, "assessments": zero}),
            "{l}"
        );
    }
    // A file bundle with a changed question propagates too, and refuses school content.
    let bundle = json!({"questions": [{"id": q_geo, "course_id": geo, "question_text": "Sum of angles?",
        "question_type": 0, "subject": 1, "grade_level": 9, "difficulty_level": 1, "correct_answer": "180"}]});
    let file = f.dir.path().join("bundle.json");
    std::fs::write(&file, bundle.to_string()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-dataplane"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "distribute-content",
            "--from",
            file.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text: String = sqlx::query_scalar("SELECT question_text FROM questions WHERE id = $1")
        .bind(q_geo)
        .fetch_one(&mut b_conn)
        .await
        .unwrap();
    assert_eq!(text, "Sum of angles?");
    let bad = json!({"assessments": [{"id": Uuid::new_v4(), "school_id": ta}]});
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_edumind-dataplane"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "distribute-content",
            "--from",
            file.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only global content"));
}
