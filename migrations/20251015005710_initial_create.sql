-- InitialCreate: the nine core tables and the four orchestration tables of
-- the storage spec (docs/schema.md explains every choice that the spec leaves open).
-- Board/module/metadata columns of courses and questions arrive in the next migration,
-- as they did in the spec's migration history.

CREATE TABLE users (
    id          uuid         PRIMARY KEY,
    email       varchar(255) NOT NULL,
    full_name   varchar(255) NOT NULL,
    role        integer      NOT NULL CHECK (role BETWEEN 0 AND 5),
    school_id   uuid         NULL,
    is_active   boolean      NOT NULL DEFAULT true,
    external_id varchar(255) NULL,
    created_at  timestamptz  NOT NULL DEFAULT now(),
    updated_at  timestamptz  NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ix_users_email ON users (email);
CREATE UNIQUE INDEX ix_users_external_id ON users (external_id);
CREATE INDEX ix_users_school_id ON users (school_id);
CREATE INDEX ix_users_role ON users (role);

CREATE TABLE schools (
    id            uuid         PRIMARY KEY,
    name          varchar(255) NOT NULL,
    code          varchar(50)  NOT NULL,
    address       varchar(500) NOT NULL,
    contact_email varchar(255) NOT NULL,
    contact_phone varchar(50)  NULL,
    is_active     boolean      NOT NULL DEFAULT true,
    created_at    timestamptz  NOT NULL DEFAULT now(),
    updated_at    timestamptz  NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ix_schools_code ON schools (code);
CREATE INDEX ix_schools_is_active ON schools (is_active);

CREATE TABLE classes (
    id            uuid         PRIMARY KEY,
    school_id     uuid         NOT NULL,
    name          varchar(255) NOT NULL,
    code          varchar(50)  NOT NULL,
    grade_level   integer      NOT NULL CHECK (grade_level BETWEEN 6 AND 12),
    subject       integer      NOT NULL,
    teacher_ids   text         NOT NULL DEFAULT '[]'
                               CHECK (jsonb_typeof(teacher_ids::jsonb) = 'array'),
    student_ids   text         NOT NULL DEFAULT '[]'
                               CHECK (jsonb_typeof(student_ids::jsonb) = 'array'),
    academic_year varchar(20)  NOT NULL,
    is_active     boolean      NOT NULL DEFAULT true,
    created_at    timestamptz  NOT NULL DEFAULT now(),
    updated_at    timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX ix_classes_school_id ON classes (school_id);
CREATE UNIQUE INDEX ix_classes_school_id_code ON classes (school_id, code);
CREATE INDEX ix_classes_grade_level ON classes (grade_level);
CREATE INDEX ix_classes_subject ON classes (subject);

CREATE TABLE students (
    id                       uuid         PRIMARY KEY,
    user_id                  uuid         NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    school_id                uuid         NULL,
    class_ids                text         NOT NULL DEFAULT '[]'
                                          CHECK (jsonb_typeof(class_ids::jsonb) = 'array'),
    grade_level              integer      NOT NULL CHECK (grade_level BETWEEN 6 AND 12),
    date_of_birth            date         NULL,
    parental_consent_granted boolean      NOT NULL DEFAULT false,
    parent_email             varchar(255) NULL,
    subscription_tier        integer      NOT NULL DEFAULT 0,
    subscription_expires_at  timestamptz  NULL,
    level                    integer      NOT NULL DEFAULT 1,
    xp_points                integer      NOT NULL DEFAULT 0 CHECK (xp_points >= 0),
    daily_streak             integer      NOT NULL DEFAULT 0 CHECK (daily_streak >= 0),
    last_activity_date       date         NULL,
    created_at               timestamptz  NOT NULL DEFAULT now(),
    updated_at               timestamptz  NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ix_students_user_id ON students (user_id);
CREATE INDEX ix_students_school_id ON students (school_id);
CREATE INDEX ix_students_grade_level ON students (grade_level);
CREATE INDEX ix_students_subscription_tier ON students (subscription_tier);

CREATE TABLE courses (
    id                  uuid          PRIMARY KEY,
    name                varchar(255)  NOT NULL,
    code                varchar(50)   NOT NULL,
    subject             integer       NOT NULL,
    grade_level         integer       NOT NULL CHECK (grade_level BETWEEN 6 AND 12),
    description         varchar(2000) NOT NULL,
    learning_objectives text          NOT NULL DEFAULT '[]'
                                      CHECK (jsonb_typeof(learning_objectives::jsonb) = 'array'),
    topics              text          NOT NULL DEFAULT '[]'
                                      CHECK (jsonb_typeof(topics::jsonb) = 'array'),
    is_active           boolean       NOT NULL DEFAULT true,
    course_admin_id     uuid          NULL,
    created_at          timestamptz   NOT NULL DEFAULT now(),
    updated_at          timestamptz   NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ix_courses_code ON courses (code);
CREATE INDEX ix_courses_subject ON courses (subject);
CREATE INDEX ix_courses_grade_level ON courses (grade_level);

CREATE TABLE assessments (
    id                       uuid          PRIMARY KEY,
    course_id                uuid          NOT NULL REFERENCES courses (id) ON DELETE RESTRICT,
    school_id                uuid          NULL,
    title                    varchar(255)  NOT NULL,
    description              varchar(2000) NOT NULL,
    assessment_type          integer       NOT NULL,
    subject                  integer       NOT NULL,
    grade_level              integer       NOT NULL CHECK (grade_level BETWEEN 6 AND 12),
    topics                   text          NOT NULL DEFAULT '[]'
                                           CHECK (jsonb_typeof(topics::jsonb) = 'array'),
    question_ids             text          NOT NULL DEFAULT '[]'
                                           CHECK (jsonb_typeof(question_ids::jsonb) = 'array'),
    total_points             integer       NOT NULL DEFAULT 0 CHECK (total_points >= 0),
    time_limit_minutes       integer       NULL CHECK (time_limit_minutes > 0),
    passing_score_percentage integer       NOT NULL DEFAULT 70
                                           CHECK (passing_score_percentage BETWEEN 0 AND 100),
    is_active                boolean       NOT NULL DEFAULT true,
    created_at               timestamptz   NOT NULL DEFAULT now(),
    updated_at               timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX ix_assessments_course_id ON assessments (course_id);
CREATE INDEX ix_assessments_school_id ON assessments (school_id);
CREATE INDEX ix_assessments_assessment_type ON assessments (assessment_type);
CREATE INDEX ix_assessments_subject ON assessments (subject);
CREATE INDEX ix_assessments_grade_level ON assessments (grade_level);

CREATE TABLE questions (
    id                  uuid             PRIMARY KEY,
    course_id           uuid             NOT NULL REFERENCES courses (id) ON DELETE RESTRICT,
    question_text       varchar(4000)    NOT NULL,
    question_type       integer          NOT NULL,
    subject             integer          NOT NULL,
    grade_level         integer          NOT NULL CHECK (grade_level BETWEEN 6 AND 12),
    difficulty_level    integer          NOT NULL,
    topics              text             NOT NULL DEFAULT '[]'
                                         CHECK (jsonb_typeof(topics::jsonb) = 'array'),
    learning_objectives text             NOT NULL DEFAULT '[]'
                                         CHECK (jsonb_typeof(learning_objectives::jsonb) = 'array'),
    answer_options      varchar(4000)    NULL,
    correct_answer      varchar(4000)    NOT NULL,
    explanation         varchar(4000)    NULL,
    points              integer          NOT NULL DEFAULT 1 CHECK (points >= 0),
    irt_discrimination  double precision NULL,
    irt_difficulty      double precision NULL,
    irt_guessing        double precision NULL,
    is_active           boolean          NOT NULL DEFAULT true,
    times_answered      integer          NOT NULL DEFAULT 0,
    times_correct       integer          NOT NULL DEFAULT 0,
    is_ai_generated     boolean          NOT NULL DEFAULT false,
    content_hash        varchar(64)      NULL,
    created_at          timestamptz      NOT NULL DEFAULT now(),
    updated_at          timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX ix_questions_course_id ON questions (course_id);
CREATE INDEX ix_questions_subject ON questions (subject);
CREATE INDEX ix_questions_grade_level ON questions (grade_level);
CREATE INDEX ix_questions_difficulty_level ON questions (difficulty_level);
CREATE INDEX ix_questions_content_hash ON questions (content_hash);
CREATE INDEX ix_questions_is_ai_generated ON questions (is_ai_generated);

CREATE TABLE student_assessments (
    id                     uuid             PRIMARY KEY,
    student_id             uuid             NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    assessment_id          uuid             NOT NULL REFERENCES assessments (id) ON DELETE RESTRICT,
    school_id              uuid             NULL,
    class_id               uuid             NULL,
    status                 integer          NOT NULL DEFAULT 0,
    started_at             timestamptz      NULL,
    completed_at           timestamptz      NULL,
    score                  integer          NULL,
    max_score              integer          NOT NULL CHECK (max_score >= 0),
    passed                 boolean          NULL,
    current_question_index integer          NOT NULL DEFAULT 0 CHECK (current_question_index >= 0),
    estimated_ability      double precision NULL,
    time_spent_seconds     integer          NULL,
    correct_answers        integer          NOT NULL DEFAULT 0,
    incorrect_answers      integer          NOT NULL DEFAULT 0,
    skipped_questions      integer          NOT NULL DEFAULT 0,
    feedback               varchar(4000)    NULL,
    recommendations        text             NOT NULL DEFAULT '[]'
                                            CHECK (jsonb_typeof(recommendations::jsonb) = 'array'),
    xp_earned              integer          NOT NULL DEFAULT 0,
    created_at             timestamptz      NOT NULL DEFAULT now(),
    updated_at             timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX ix_student_assessments_student_id ON student_assessments (student_id);
CREATE INDEX ix_student_assessments_assessment_id ON student_assessments (assessment_id);
CREATE INDEX ix_student_assessments_student_id_assessment_id
    ON student_assessments (student_id, assessment_id);
CREATE INDEX ix_student_assessments_school_id ON student_assessments (school_id);
CREATE INDEX ix_student_assessments_class_id ON student_assessments (class_id);
CREATE INDEX ix_student_assessments_status ON student_assessments (status);
CREATE INDEX ix_student_assessments_completed_at ON student_assessments (completed_at);

CREATE TABLE student_responses (
    id                    uuid             PRIMARY KEY,
    student_assessment_id uuid             NOT NULL
                                           REFERENCES student_assessments (id) ON DELETE CASCADE,
    student_id            uuid             NOT NULL REFERENCES students (id) ON DELETE RESTRICT,
    question_id           uuid             NOT NULL REFERENCES questions (id) ON DELETE RESTRICT,
    school_id             uuid             NULL,
    student_answer        varchar(4000)    NOT NULL,
    is_correct            boolean          NOT NULL,
    points_earned         integer          NOT NULL DEFAULT 0 CHECK (points_earned >= 0),
    max_points            integer          NOT NULL CHECK (max_points >= 0),
    time_spent_seconds    integer          NOT NULL DEFAULT 0 CHECK (time_spent_seconds >= 0),
    question_order        integer          NOT NULL CHECK (question_order >= 0),
    ability_at_time       double precision NULL,
    feedback              varchar(4000)    NULL,
    ai_explanation        varchar(4000)    NULL,
    submitted_at          timestamptz      NOT NULL DEFAULT now(),
    created_at            timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX ix_student_responses_student_assessment_id
    ON student_responses (student_assessment_id);
CREATE INDEX ix_student_responses_student_id ON student_responses (student_id);
CREATE INDEX ix_student_responses_question_id ON student_responses (question_id);
CREATE UNIQUE INDEX ix_student_responses_student_assessment_id_question_id
    ON student_responses (student_assessment_id, question_id);
CREATE INDEX ix_student_responses_school_id ON student_responses (school_id);

-- Orchestration tables (spec 2.3). The spec gives no constraints beyond the keys;
-- docs/schema.md records the nullability chosen here.

CREATE TABLE workflow_executions (
    execution_id             varchar(100) PRIMARY KEY,
    tenant_id                varchar(100) NOT NULL,
    workflow_name            varchar(200) NOT NULL,
    status                   varchar(50)  NOT NULL
                             CHECK (status IN ('Pending', 'Running', 'Completed', 'Failed')),
    workflow_definition_json text         NOT NULL,
    started_at               timestamptz  NOT NULL DEFAULT now(),
    completed_at             timestamptz  NULL,
    initiated_by             varchar(100) NOT NULL,
    tags                     varchar(500) NULL
);

CREATE TABLE circuit_breaker_states (
    agent_key       varchar(200) PRIMARY KEY,
    tenant_id       varchar(100) NOT NULL,
    state           varchar(20)  NOT NULL CHECK (state IN ('Closed', 'Open', 'HalfOpen')),
    failure_count   integer      NOT NULL DEFAULT 0 CHECK (failure_count >= 0),
    last_failure_at timestamptz  NULL,
    last_updated    timestamptz  NOT NULL DEFAULT now()
);

CREATE TABLE routing_decisions (
    id                    uuid             PRIMARY KEY,
    tenant_id             varchar(100)     NOT NULL,
    task_id               varchar(100)     NOT NULL,
    task_type             varchar(100)     NOT NULL,
    required_capability   varchar(100)     NOT NULL,
    selected_agent        varchar(200)     NOT NULL,
    reason                text             NOT NULL,
    routing_score         double precision NOT NULL,
    workflow_execution_id varchar(100)     NULL,
    workflow_step_id      varchar(100)     NULL,
    routed_at             timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE routing_statistics (
    agent_key           varchar(200)     PRIMARY KEY,
    tenant_id           varchar(100)     NOT NULL,
    total_tasks         integer          NOT NULL DEFAULT 0 CHECK (total_tasks >= 0),
    successful_tasks    integer          NOT NULL DEFAULT 0 CHECK (successful_tasks >= 0),
    failed_tasks        integer          NOT NULL DEFAULT 0 CHECK (failed_tasks >= 0),
    average_duration_ms integer          NOT NULL DEFAULT 0,
    success_rate        double precision NOT NULL DEFAULT 0,
    last_updated        timestamptz      NOT NULL DEFAULT now()
);
