//! DELETE of classes, courses, questions and assessments: roles, 404, 409 while
//! referenced, and the cache keys dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use support::*;
use uuid::Uuid;

#[tokio::test]
async fn deletes_are_admin_only_refuse_referenced_rows_and_drop_cache_keys() {
    let f = Fixture::start(edumind_tests::redis().await.url()).await;
    let ta = f.a.school_id.unwrap();
    let tb = f.b.school_id.unwrap();
    let admin = token(Uuid::new_v4(), 5, None);
    let course_admin = token(Uuid::new_v4(), 3, None);
    let sadmin = token(f.a.admin_user, 2, Some(ta));
    let teacher = token(f.a.teacher_user, 1, Some(ta));
    let b_admin = token(f.b.admin_user, 2, Some(tb));

    // Classes: teachers 403, another school's admin 404, own school admin 204.
    let class = format!("/v1/tenants/{ta}/classes/{}", f.a.class_id);
    let roster = format!("{class}/roster");
    assert_eq!(f.call("GET", &roster, Some(&sadmin), None).await.0, 200); // cached
    assert_eq!(f.call("DELETE", &class, Some(&teacher), None).await.0, 403);
    assert_eq!(
        f.call("DELETE", &class, Some(&course_admin), None).await.0,
        403
    );
    let (s, _, _) = f
        .call(
            "DELETE",
            &class.replace(&ta.to_string(), &tb.to_string()),
            Some(&b_admin),
            None,
        )
        .await;
    assert_eq!(s, 404, "a's class id in b's tenant does not exist");
    assert_eq!(f.call("DELETE", &class, Some(&b_admin), None).await.0, 404);
    let (s, v, _) = f.call("DELETE", &class, Some(&sadmin), None).await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(f.call("DELETE", &class, Some(&sadmin), None).await.0, 404);
    assert_eq!(
        f.call("GET", &roster, Some(&sadmin), None).await.0,
        404,
        "the cached roster is gone"
    );
    assert_eq!(
        f.call(
            "DELETE",
            &format!("/v1/tenants/selfservice/classes/{}", Uuid::new_v4()),
            Some(&admin),
            None
        )
        .await
        .0,
        404
    );

    // Content: a course with questions and an assessment is referenced → 409 problem.
    let course = format!("/v1/tenants/{ta}/courses/{COURSE}");
    let (s, v, h) = f.call("DELETE", &course, Some(&course_admin), None).await;
    assert_eq!((s, v["status"].as_u64()), (409, Some(409)), "{v}");
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(f.call("DELETE", &course, Some(&sadmin), None).await.0, 403);
    // A question listed in an assessment's question_ids → 409.
    let (s, _, _) = f
        .call(
            "DELETE",
            &format!("/v1/tenants/{ta}/questions/{Q3}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, 409);

    // A fresh question: cached in its course's list, deleted, gone from the list.
    let q = Uuid::new_v4();
    let (s, v, _) = f
        .call(
            "PUT",
            &format!("/v1/tenants/{ta}/questions/{q}"),
            Some(&course_admin),
            Some(json!({"course_id": COURSE, "question_text": "temp?", "question_type": 0,
                        "subject": 1, "grade_level": 8, "difficulty_level": 1, "correct_answer": "1"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let list = format!("/v1/tenants/{ta}/courses/{COURSE}/questions");
    let (_, v, _) = f.call("GET", &list, Some(&admin), None).await;
    assert!(v.to_string().contains("temp?"));
    let qpath = format!("/v1/tenants/{ta}/questions/{q}");
    assert_eq!(
        f.call("DELETE", &qpath, Some(&course_admin), None).await.0,
        204
    );
    assert_eq!(
        f.call("DELETE", &qpath, Some(&course_admin), None).await.0,
        404
    );
    let (_, v, _) = f.call("GET", &list, Some(&admin), None).await;
    assert!(!v.to_string().contains("temp?"), "cached list dropped: {v}");

    // An assessment with an attempt → 409; a fresh one: cached, deleted, 404.
    let student = token(f.a.students[0].0, 0, Some(ta));
    let (s, v, _) = f
        .call(
            "POST",
            &format!("/v1/tenants/{ta}/attempts"),
            Some(&student),
            Some(json!({"assessment_id": ASSESSMENT})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        f.call(
            "DELETE",
            &format!("/v1/tenants/{ta}/assessments/{ASSESSMENT}"),
            Some(&admin),
            None
        )
        .await
        .0,
        409
    );
    let new_course = Uuid::new_v4();
    let cpath = format!("/v1/tenants/{ta}/courses/{new_course}");
    let (s, v, _) = f
        .call(
            "PUT",
            &cpath,
            Some(&admin),
            Some(json!({"name": "Tmp", "code": "TMP1", "subject": 1, "grade_level": 8})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let a = Uuid::new_v4();
    let apath = format!("/v1/tenants/{ta}/assessments/{a}");
    let (s, v, _) = f
        .call(
            "PUT",
            &apath,
            Some(&admin),
            Some(
                json!({"course_id": new_course, "title": "T", "assessment_type": 0,
                                                      "subject": 1, "grade_level": 8}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(f.call("GET", &apath, Some(&admin), None).await.0, 200); // cached
    assert_eq!(
        f.call("DELETE", &cpath, Some(&admin), None).await.0,
        409,
        "the assessment uses it"
    );
    assert_eq!(f.call("DELETE", &apath, Some(&student), None).await.0, 403);
    assert_eq!(f.call("DELETE", &apath, Some(&admin), None).await.0, 204);
    assert_eq!(
        f.call("GET", &apath, Some(&admin), None).await.0,
        404,
        "cached metadata dropped"
    );
    assert_eq!(f.call("DELETE", &cpath, Some(&admin), None).await.0, 204);
    // Not a UUID: like every id path here, a row that cannot exist (404 problem).
    let (s, _, h) = f
        .call(
            "DELETE",
            &format!("/v1/tenants/{ta}/courses/nope"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        (s, h["content-type"].to_str().unwrap()),
        (404, "application/problem+json")
    );

    // Self-service: platform admins delete content there; students get 403.
    let sc = Uuid::new_v4();
    let sspath = format!("/v1/tenants/selfservice/courses/{sc}");
    let (s, v, _) = f
        .call(
            "PUT",
            &sspath,
            Some(&admin),
            Some(json!({"name": "Tmp", "code": "TMPSS", "subject": 1, "grade_level": 8})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ss_student = token(f.ss.students[0].0, 0, None);
    assert_eq!(
        f.call("DELETE", &sspath, Some(&ss_student), None).await.0,
        403
    );
    assert_eq!(f.call("DELETE", &sspath, Some(&admin), None).await.0, 204);
    assert_eq!(f.call("DELETE", &sspath, None, None).await.0, 401);
}
