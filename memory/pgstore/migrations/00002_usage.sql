-- +goose Up
-- Each namespace counts its records and their bytes, kept in step by every write in the write's transaction, so
-- a tenant's quota check sums a few catalog rows instead of scanning its records. Bytes are the store's measure
-- of a record: id, text, 4 per vector element and the metadata's JSON text.
ALTER TABLE memory_namespaces
    ADD COLUMN IF NOT EXISTS record_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS size_bytes bigint NOT NULL DEFAULT 0;
-- +goose StatementBegin
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id FROM memory_namespaces LOOP
        EXECUTE format('UPDATE memory_namespaces n SET (record_count, size_bytes) = (SELECT count(*), coalesce(sum(octet_length(t.id) + octet_length(t.text) + 4 * vector_dims(t.embedding) + octet_length(t.metadata::text)), 0) FROM %I t) WHERE n.id = %s',
            'memory_records_' || r.id, r.id);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
ALTER TABLE memory_namespaces DROP COLUMN record_count, DROP COLUMN size_bytes;
