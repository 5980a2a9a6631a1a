//! The replicas' rows (heartbeats) and the [`SharedStore`] the cluster
//! talks to.

use super::{db_err, to_i64, PostgresPlugin};
use crate::persist::shared::{Beat, Membership, Notifications, Range, ReplicaRow, SharedStore};
use crate::persist::PersistError;
use async_trait::async_trait;

#[async_trait]
impl SharedStore for PostgresPlugin {
    async fn durable_head(&self) -> Result<u64, PersistError> {
        // Also refreshes the retention floor from the head row.
        let (durable, _) = futures::try_join!(self.read_durable_head(), self.head())?;
        Ok(durable)
    }

    async fn read_range(&self, after: u64, upto: u64) -> Result<Range, PersistError> {
        self.range(after, upto).await
    }

    /// Upserts this replica's row (`seen_at` by the database's clock, so
    /// replicas' clocks need not agree) and answers the rows seen within
    /// the expiry, this one included, and which process wrote this name's
    /// row before.
    async fn heartbeat(&self, beat: Beat<'_>) -> Result<Membership, PersistError> {
        let (name, instance) = (beat.name.to_string(), beat.instance.to_string());
        let expiry_ms = beat.expiry.as_millis() as f64;
        let (active, mpm) = (to_i64(beat.active_connections), to_i64(beat.messages_per_minute));
        let (previous, rows) = self
            .with("heartbeat", move |c| {
                Box::pin(async move {
                    // The CTE reads the row as it was before this upsert.
                    let previous = c
                        .query_one(
                            "WITH old AS (SELECT instance FROM sidewire_replicas WHERE name = $1)
                             INSERT INTO sidewire_replicas
                                 (name, active_connections, messages_per_minute, seen_at, instance)
                             VALUES ($1, $2, $3, now(), $4)
                             ON CONFLICT (name) DO UPDATE SET active_connections = $2,
                                 messages_per_minute = $3, seen_at = now(), instance = $4
                             RETURNING (SELECT instance FROM old)",
                            &[&name, &active, &mpm, &instance],
                        )
                        .await
                        .map_err(db_err)?
                        .get::<_, Option<String>>(0);
                    let rows = c
                        .query(
                            "SELECT name, active_connections, messages_per_minute FROM sidewire_replicas
                             WHERE seen_at > now() - make_interval(secs => $1::float8 / 1000.0)",
                            &[&expiry_ms],
                        )
                        .await
                        .map_err(db_err)?;
                    Ok((previous, rows))
                })
            })
            .await?;
        let rows = rows
            .iter()
            .map(|r| ReplicaRow {
                name: r.get(0),
                active_connections: r.get::<_, i64>(1).max(0) as u64,
                messages_per_minute: r.get::<_, i64>(2).max(0) as u64,
            })
            .collect();
        Ok(Membership { live: rows, previous_instance: previous })
    }

    async fn leave(&self, name: &str) -> Result<(), PersistError> {
        let name = name.to_string();
        self.with("leave", move |c| {
            Box::pin(async move {
                c.execute("DELETE FROM sidewire_replicas WHERE name = $1", &[&name]).await.map_err(db_err).map(|_| ())
            })
        })
        .await
    }

    async fn listen(&self, channel: &str) -> Result<Box<dyn Notifications>, PersistError> {
        Ok(Box::new(self.open_listener(channel).await?))
    }

    fn describe(&self) -> String {
        self.redacted_url().to_string()
    }
}
