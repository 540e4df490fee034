-- Sync stores a box's journal 2,000 entries a statement (firmware/sync).
-- The foreign key box_journal → boxes checked every entry on its own, the
-- same box 2,000 times: about half the time of the insert
-- (BenchmarkSyncIngest). It becomes one check a statement, with the same
-- guarantees: every entry names an existing box of its tenant, the box is
-- locked FOR KEY SHARE as the foreign key did (a concurrent delete waits),
-- and a box with a journal cannot be deleted (boxes are soft-deleted by the
-- application; this guards the others).

-- +goose Up
ALTER TABLE box_journal DROP CONSTRAINT box_journal_tenant_id_box_id_fkey;

-- +goose StatementBegin
CREATE FUNCTION box_journal_box_exists() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    found  bigint;
BEGIN
    SELECT count(*) INTO wanted FROM (SELECT DISTINCT tenant_id, box_id FROM new_entries) n;
    SELECT count(*) INTO found FROM (
        SELECT 1 FROM boxes b
        WHERE (b.tenant_id, b.id) IN (SELECT tenant_id, box_id FROM new_entries)
        FOR KEY SHARE OF b) f;
    IF found <> wanted THEN
        RAISE EXCEPTION 'box_journal: an entry names a box that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER box_journal_box_exists AFTER INSERT ON box_journal
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION box_journal_box_exists();

-- +goose StatementBegin
CREATE FUNCTION boxes_keep_journal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM box_journal j WHERE j.tenant_id = OLD.tenant_id AND j.box_id = OLD.id) THEN
        RAISE EXCEPTION 'boxes: box % has a journal and cannot be deleted', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER boxes_keep_journal BEFORE DELETE ON boxes
    FOR EACH ROW EXECUTE FUNCTION boxes_keep_journal();

-- +goose Down
DROP TRIGGER boxes_keep_journal ON boxes;
DROP FUNCTION boxes_keep_journal();
DROP TRIGGER box_journal_box_exists ON box_journal;
DROP FUNCTION box_journal_box_exists();
ALTER TABLE box_journal ADD CONSTRAINT box_journal_tenant_id_box_id_fkey
    FOREIGN KEY (tenant_id, box_id) REFERENCES boxes (tenant_id, id);
