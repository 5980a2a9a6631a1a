\set r random(1, 9000000000000000)
INSERT INTO sidewire_events (seq, type, ts_ms, id, source, data, stored_ms) SELECT nextval('sw_raw_seq'), 'ingestion_complete', 1765000000000, 'id-' || :r || '-' || g, 'bench', '{"fileName":"report-2026-q3.pdf","filesProcessed":3,"bytes":48213,"durationMs":812,"status":"ok","pipeline":"docs"}', 1765000000000 FROM generate_series(1,100) g;
