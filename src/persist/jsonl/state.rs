//! The state file: the [`DurableStats`] after the last stored batch.

use super::err;
use super::files::{state_path, with_suffix};
use crate::persist::PersistError;
use crate::stats::DurableStats;
use std::fs;
use std::io;
use std::path::Path;

/// Replaces the state file: temp file + rename, so a reader (or a crash)
/// sees the old state or the new one, never a mix.
pub(super) fn write_state(path: &Path, stats: &DurableStats) -> io::Result<()> {
    let state = state_path(path);
    let tmp = with_suffix(&state, ".tmp");
    fs::write(&tmp, serde_json::to_vec(stats)?)?;
    fs::rename(&tmp, &state)
}

/// Reads the state file. A missing file is a fresh store; an unreadable
/// one (e.g. emptied by a power loss, as it is not fsynced) is logged and
/// treated as missing: the events themselves are intact.
pub(super) fn read_state(path: &Path) -> Result<Option<DurableStats>, PersistError> {
    let state = state_path(path);
    let text = match fs::read(&state) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot read {}: {e}", state.display()))),
    };
    match serde_json::from_slice::<DurableStats>(&text) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            tracing::warn!(path = %state.display(), error = %e,
                "jsonl state file is unreadable; counters and totals start from zero");
            Ok(None)
        }
    }
}
