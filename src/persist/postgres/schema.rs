//! The schema: versioned migrations (`sidewire_schema.version` is the
//! number applied), each in its own transaction that first takes a
//! transaction-level advisory lock, so replicas starting at the same moment
//! migrate one after the other and the later ones find nothing to do.

use super::{corrupt, db_err, PersistError, PostgresPlugin};
use std::time::Duration;

/// Key of the advisory lock that serializes migrations across replicas.
pub(super) const MIGRATION_LOCK: i64 = 0x5349_4445_5749_5245; // "SIDEWIRE"

/// Schema migrations; `sidewire_schema.version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: events with their dedupe and per-type indexes, the head row (last
    // seq, stats, retention floor), the replicas' heartbeats.
    "CREATE TABLE sidewire_events (
         seq       BIGINT PRIMARY KEY,
         type      TEXT   NOT NULL,
         ts_ms     BIGINT NOT NULL,
         id        TEXT   UNIQUE,
         source    TEXT,
         data      TEXT   NOT NULL,
         stored_ms BIGINT NOT NULL
     );
     CREATE INDEX sidewire_events_by_type ON sidewire_events (type, seq);
     CREATE INDEX sidewire_events_by_stored ON sidewire_events (stored_ms);
     CREATE TABLE sidewire_head (
         one             BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
         last_seq        BIGINT  NOT NULL,
         stats           TEXT,
         retention_floor BIGINT  NOT NULL DEFAULT 0
     );
     INSERT INTO sidewire_head (last_seq) VALUES (0);
     CREATE TABLE sidewire_replicas (
         name                TEXT PRIMARY KEY,
         active_connections  BIGINT NOT NULL,
         messages_per_minute BIGINT NOT NULL,
         seen_at             TIMESTAMPTZ NOT NULL
     );",
    // 2: which process wrote a heartbeat row (tells two replicas that share
    // a name apart).
    "ALTER TABLE sidewire_replicas ADD COLUMN instance TEXT NOT NULL DEFAULT '';",
    // 3: the one-round-trip commit (see `commit`): the durable heads, the
    // stats merge and the two server-side functions.
    "CREATE TABLE sidewire_durable (
         replica TEXT   PRIMARY KEY,
         upto    BIGINT NOT NULL
     );
     -- Everything committed before this version was committed synchronously.
     INSERT INTO sidewire_durable (replica, upto) SELECT '', last_seq FROM sidewire_head;

     -- The stored stats (`DurableStats` as JSON) after a commit whose own
     -- events' stats are `delta` and whose last seq is `last`: counts and
     -- counters add up key by key (counters kept finite as f64, as the single
     -- process does), gauges and the time are the delta's. plpgsql, not SQL:
     -- its statements' plans are cached, where a SQL function's body would
     -- be planned again on every commit (0.7 ms here, inside the head lock).
     CREATE FUNCTION sidewire_merge_stats(old jsonb, delta jsonb, last bigint) RETURNS jsonb
     LANGUAGE plpgsql IMMUTABLE AS $f$
     DECLARE
       v_types jsonb := coalesce(old->'eventsByType', '{}'::jsonb);
       v_counters jsonb := coalesce(old->'counters', '{}'::jsonb);
       v_key text;
       v_add jsonb;
       v_sum numeric;
     BEGIN
       FOR v_key, v_add IN SELECT * FROM jsonb_each(delta->'eventsByType') LOOP
         v_types := v_types || jsonb_build_object(v_key,
           coalesce((v_types->>v_key)::numeric, 0) + (v_add#>>'{}')::numeric);
       END LOOP;
       FOR v_key, v_add IN SELECT * FROM jsonb_each(delta->'counters') LOOP
         v_sum := coalesce((v_counters->>v_key)::numeric, 0) + (v_add#>>'{}')::numeric;
         v_counters := v_counters || jsonb_build_object(v_key,
           least(greatest(v_sum, -1.7976931348623157e308), 1.7976931348623157e308));
       END LOOP;
       RETURN jsonb_build_object(
         'lastSeq', last,
         'lastEventAt', coalesce(delta->'lastEventAt', old->'lastEventAt'),
         'eventsTotal', coalesce((old->>'eventsTotal')::numeric, 0) + coalesce((delta->>'eventsTotal')::numeric, 0),
         'eventsByType', v_types,
         'counters', v_counters,
         'gauges', coalesce(old->'gauges', '{}'::jsonb) || coalesce(delta->'gauges', '{}'::jsonb));
     END
     $f$;

     -- Step 1 of a group commit: under the head lock, refuse the group if
     -- any of its ids is stored (answering their seqs), else number it
     -- after the head, insert it and move the head and the stats. Commits
     -- without waiting for its WAL flush, so the lock is released at once;
     -- `sidewire_durable` makes it durable.
     CREATE FUNCTION sidewire_commit(p_kinds text[], p_ts_ms bigint[], p_ids text[], p_sources text[],
                                     p_datas text[], p_stored_ms bigint, p_delta text,
                                     OUT first_seq bigint, OUT dup_ids text[], OUT dup_seqs bigint[],
                                     OUT new_stats text)
     LANGUAGE plpgsql AS $f$
     DECLARE
       v_last bigint;
       v_old text;
       v_n bigint := coalesce(cardinality(p_kinds), 0);
     BEGIN
       PERFORM set_config('synchronous_commit', 'off', true);
       SELECT h.last_seq, h.stats INTO v_last, v_old FROM sidewire_head h FOR UPDATE;
       SELECT array_agg(e.id), array_agg(e.seq) INTO dup_ids, dup_seqs
         FROM sidewire_events e WHERE e.id = ANY(p_ids);
       IF dup_ids IS NOT NULL OR v_n = 0 THEN
         first_seq := 0;
         new_stats := v_old;
         RETURN;
       END IF;
       INSERT INTO sidewire_events (seq, type, ts_ms, id, source, data, stored_ms)
         SELECT v_last + u.ord, u.k, u.t, u.i, u.s, u.d, p_stored_ms
           FROM unnest(p_kinds, p_ts_ms, p_ids, p_sources, p_datas) WITH ORDINALITY AS u(k, t, i, s, d, ord);
       new_stats := sidewire_merge_stats(v_old::jsonb, p_delta::jsonb, v_last + v_n)::text;
       UPDATE sidewire_head SET last_seq = v_last + v_n, stats = new_stats;
       first_seq := v_last + 1;
     END
     $f$;

     -- Step 2: a small synchronous commit after step 1, on the same
     -- connection. Its flush covers every commit it saw (the WAL is one
     -- sequential log), so the head it read is durable once it returns;
     -- it records that head in this replica's row and notifies it.
     CREATE FUNCTION sidewire_durable(p_replica text, p_channel text) RETURNS bigint
     LANGUAGE plpgsql AS $f$
     DECLARE
       v_upto bigint;
     BEGIN
       IF current_setting('synchronous_commit') = 'off' THEN
         PERFORM set_config('synchronous_commit', 'on', true);
       END IF;
       SELECT h.last_seq INTO v_upto FROM sidewire_head h;
       INSERT INTO sidewire_durable AS d (replica, upto) VALUES (p_replica, v_upto)
         ON CONFLICT (replica) DO UPDATE SET upto = greatest(d.upto, EXCLUDED.upto);
       IF p_channel IS NOT NULL THEN
         PERFORM pg_notify(p_channel, v_upto::text);
       END IF;
       RETURN v_upto;
     END
     $f$;",
    // 4: `sidewire_commit` plans its id lookup with the index, whatever
    // the table's statistics say (they say "empty" until autoanalyze runs).
    "CREATE OR REPLACE FUNCTION sidewire_commit(p_kinds text[], p_ts_ms bigint[], p_ids text[], p_sources text[],
                                     p_datas text[], p_stored_ms bigint, p_delta text,
                                     OUT first_seq bigint, OUT dup_ids text[], OUT dup_seqs bigint[],
                                     OUT new_stats text)
     LANGUAGE plpgsql AS $f$
     DECLARE
       v_last bigint;
       v_old text;
       v_n bigint := coalesce(cardinality(p_kinds), 0);
     BEGIN
       PERFORM set_config('synchronous_commit', 'off', true);
       SELECT h.last_seq, h.stats INTO v_last, v_old FROM sidewire_head h FOR UPDATE;
       -- The id lookup must use the unique index. Its plan is cached for
       -- the session: planned while the table looked empty (a new database,
       -- before autoanalyze), it would scan the whole table on every commit
       -- until the next analyze. (Only around it: a forced plan elsewhere
       -- costs 10^10 and sets off JIT compilation.)
       PERFORM set_config('enable_seqscan', 'off', true);
       SELECT array_agg(e.id), array_agg(e.seq) INTO dup_ids, dup_seqs
         FROM sidewire_events e WHERE e.id = ANY(p_ids);
       PERFORM set_config('enable_seqscan', 'on', true);
       IF dup_ids IS NOT NULL OR v_n = 0 THEN
         first_seq := 0;
         new_stats := v_old;
         RETURN;
       END IF;
       INSERT INTO sidewire_events (seq, type, ts_ms, id, source, data, stored_ms)
         SELECT v_last + u.ord, u.k, u.t, u.i, u.s, u.d, p_stored_ms
           FROM unnest(p_kinds, p_ts_ms, p_ids, p_sources, p_datas) WITH ORDINALITY AS u(k, t, i, s, d, ord);
       new_stats := sidewire_merge_stats(v_old::jsonb, p_delta::jsonb, v_last + v_n)::text;
       UPDATE sidewire_head SET last_seq = v_last + v_n, stats = new_stats;
       first_seq := v_last + 1;
     END
     $f$;",
    // 5: a cheaper insert inside the head lock. Ids and types are only ever
    // compared for equality, so they compare bytewise (collation C)
    // instead of by the database's collation (a `strcoll` per comparison
    // unless that is plain C): the dedupe probe, the unique index and the
    // per-type index. Rebuilds those two indexes; the table is not
    // rewritten. `stored_ms` grows with `seq`, so retention's cutoff query
    // is served as well by a BRIN index, which an insert into a range not
    // yet summarized does not touch, as by a B-tree that every insert
    // descends.
    "ALTER TABLE sidewire_events
         ALTER COLUMN id TYPE TEXT COLLATE \"C\",
         ALTER COLUMN type TYPE TEXT COLLATE \"C\";
     DROP INDEX sidewire_events_by_stored;
     CREATE INDEX sidewire_events_by_stored ON sidewire_events USING brin (stored_ms)
         WITH (autosummarize = on);",
];

impl PostgresPlugin {
    /// Runs pending migrations (safe when several replicas start at once).
    pub(super) async fn migrate(&self) -> Result<(), PersistError> {
        for attempt in 0.. {
            let step = self
                .with("migrate", move |c| {
                    Box::pin(async move {
                        let tx = c.transaction().await.map_err(db_err)?;
                        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
                        let exists: bool = tx
                            .query_one("SELECT to_regclass('sidewire_schema') IS NOT NULL", &[])
                            .await
                            .map_err(db_err)?
                            .get(0);
                        if !exists {
                            tx.batch_execute("CREATE TABLE sidewire_schema (version INTEGER NOT NULL)")
                                .await
                                .map_err(db_err)?;
                        }
                        let version: i32 =
                            match tx.query_opt("SELECT version FROM sidewire_schema", &[]).await.map_err(db_err)? {
                                Some(row) => row.get(0),
                                None => {
                                    tx.execute("INSERT INTO sidewire_schema (version) VALUES (0)", &[])
                                        .await
                                        .map_err(db_err)?;
                                    0
                                }
                            };
                        let version = version.max(0) as usize;
                        if version > MIGRATIONS.len() {
                            return Err(corrupt(format!(
                                "schema version {version} is newer than this sidewire knows ({})",
                                MIGRATIONS.len()
                            )));
                        }
                        if version == MIGRATIONS.len() {
                            tx.commit().await.map_err(db_err)?;
                            return Ok(None);
                        }
                        tx.batch_execute(MIGRATIONS[version]).await.map_err(db_err)?;
                        let next = (version + 1) as i32;
                        tx.execute("UPDATE sidewire_schema SET version = $1", &[&next]).await.map_err(db_err)?;
                        tx.commit().await.map_err(db_err)?;
                        Ok(Some(next))
                    })
                })
                .await;
            match step {
                Ok(Some(v)) => tracing::info!(version = v, "postgres schema migrated"),
                Ok(None) => return Ok(()),
                // Two replicas creating `sidewire_schema` at the very same
                // moment can collide before the lock exists; once more.
                Err(e) if attempt < 3 && !matches!(e, PersistError::Corrupt { .. }) => {
                    tracing::debug!(error = %e, "postgres migration attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
