-- AddContentMetadataFields: board and module grouping plus free-form metadata on
-- courses and questions (spec 5.1). Existing rows get empty metadata.

ALTER TABLE courses
    ADD COLUMN board_name  varchar(100) NULL,
    ADD COLUMN module_name varchar(200) NULL,
    ADD COLUMN metadata    jsonb        NOT NULL DEFAULT '{}'::jsonb
                           CHECK (jsonb_typeof(metadata) = 'object');
CREATE INDEX ix_courses_board_name ON courses (board_name);
CREATE INDEX ix_courses_module_name ON courses (module_name);

ALTER TABLE questions
    ADD COLUMN board_name  varchar(100) NULL,
    ADD COLUMN module_name varchar(200) NULL,
    ADD COLUMN metadata    jsonb        NOT NULL DEFAULT '{}'::jsonb
                           CHECK (jsonb_typeof(metadata) = 'object');
CREATE INDEX ix_questions_board_name ON questions (board_name);
CREATE INDEX ix_questions_module_name ON questions (module_name);
