//! Config hot reload (contract section 7): the [`Reloader`] owns the sending
//! half of the config channel and replaces the [`LiveConfig`] when the file
//! changes or the process gets SIGHUP.
//!
//! Watching: a debounced `notify` watcher on the file's *folder*, not the
//! file. Editors save by writing a temporary file and renaming it over the
//! old one, and Kubernetes ConfigMaps swap a `..data` symlink; both replace
//! the inode a file watch would hold. An event counts when it names the file
//! or a `..`-prefixed entry (the ConfigMap's data folders and symlink); the
//! file is then read and skipped when its text did not change.
//!
//! A reload never makes things worse: an invalid file changes nothing (the
//! error is logged with every issue and its line), and keys that need a
//! restart keep the value in force, with a warning naming each.

use crate::config::{changed_keys, Config, ConfigIssue, LiveConfig};
use crate::internal_events::{ReloadApplied, ReloadFailed, ReloadRejected};
use crate::metrics::Metrics;
use crate::telemetry::LogHandle;
use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::DebounceEventResult;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Quiet time after the last file event before reloading: long enough to
/// see a whole save (several raw events), short enough to stay within the
/// contract's 2 s.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the file (or its ConfigMap folder) change.
    File,
    /// SIGHUP: reload even when the text did not change.
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file change",
            Trigger::Signal => "SIGHUP",
        }
    }
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A file event, but the text is what was seen last: nothing done.
    Unchanged,
    /// A new config is in force; lists the keys that changed (may be empty
    /// on SIGHUP) and the restart-only keys that kept their old value.
    Applied { changed: Vec<&'static str>, kept: Vec<&'static str> },
    /// The old config stays.
    Failed(String),
}

/// Replaces the config in force from the file. Build with [`Reloader::new`],
/// start with [`Reloader::spawn`], or call [`Reloader::reload`] directly.
pub struct Reloader {
    path: PathBuf,
    /// `SIDEWIRE__*` overrides, captured at start so a reload sees the same.
    env: Vec<(String, String)>,
    tx: watch::Sender<Arc<LiveConfig>>,
    metrics: Arc<Metrics>,
    log: Option<LogHandle>,
    debounce: Duration,
    sighup: bool,
    /// The text last read (valid or not), so repeated events for the same
    /// content are not reloaded (or counted) again.
    last_text: Option<String>,
}

/// The `SIDEWIRE__*` variables of this process, as [`Config::load`] uses them.
pub fn env_overrides() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| k.starts_with(crate::config::ENV_PREFIX)).collect()
}

impl Reloader {
    /// A reloader for the config at `path`, which is what `tx` holds now.
    /// `env` are the overrides applied at start (see [`env_overrides`]).
    pub fn new(
        path: impl Into<PathBuf>,
        env: Vec<(String, String)>,
        tx: watch::Sender<Arc<LiveConfig>>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader { path: path.into(), env, tx, metrics, log: None, debounce: DEBOUNCE, sighup: true, last_text: None }
    }

    /// Applies `telemetry.log_level` changes through this handle.
    pub fn log_handle(mut self, log: LogHandle) -> Self {
        self.log = Some(log);
        self
    }

    /// Whether SIGHUP triggers a reload (default: yes).
    pub fn sighup(mut self, on: bool) -> Self {
        self.sighup = on;
        self
    }

    /// Quiet time after file events before reloading (default [`DEBOUNCE`]).
    pub fn debounce(mut self, d: Duration) -> Self {
        self.debounce = d;
        self
    }

    /// Starts watching (and listening for SIGHUP) on a background task; the
    /// returned guard stops both when dropped. Must be called inside a tokio
    /// runtime. A watcher that cannot start is logged; SIGHUP still works.
    pub fn spawn(mut self) -> ReloadTask {
        let (events_tx, events_rx) = mpsc::channel::<()>(1);
        let watcher = match self.watch(events_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e,
                    "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        let hup = if self.sighup { sighup_stream() } else { None };
        // The file may have changed between the load and now.
        self.check_startup_text();
        let task = tokio::spawn(self.run(events_rx, hup, watcher));
        ReloadTask { task }
    }

    fn watch(&self, events: mpsc::Sender<()>) -> notify_debouncer_full::notify::Result<Watcher> {
        let (dir, name) = split_path(&self.path);
        let name = name.map(|n| n.to_os_string()).unwrap_or_default();
        let handler = move |result: DebounceEventResult| match result {
            Ok(evs) => {
                let relevant = evs.iter().any(|e| {
                    e.need_rescan()
                        || changes_content(&e.kind)
                            && e.paths.iter().any(|p| {
                                p.file_name()
                                    .is_some_and(|n| n == name.as_os_str() || n.as_encoded_bytes().starts_with(b".."))
                            })
                });
                tracing::trace!(events = ?evs.iter().map(|e| (&e.kind, &e.paths)).collect::<Vec<_>>(), relevant, "config folder events");
                if relevant {
                    // Full means a reload is already pending: it reads the newest text.
                    let _ = events.try_send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "config watcher error");
                }
            }
        };
        let mut debouncer = notify_debouncer_full::new_debouncer(self.debounce, None, handler)?;
        debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
        tracing::info!(path = %self.path.display(), folder = %dir.display(), "watching the config file");
        Ok(debouncer)
    }

    fn check_startup_text(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.path) else { return };
        let same = Config::from_toml(&text, &self.env).is_ok_and(|c| c == self.tx.borrow().config);
        if same {
            self.last_text = Some(text);
        } else {
            self.reload(Trigger::File);
        }
    }

    async fn run(mut self, mut events: mpsc::Receiver<()>, mut hup: Option<SignalStream>, _watcher: Option<Watcher>) {
        loop {
            let trigger = tokio::select! {
                Some(()) = events.recv() => Trigger::File,
                Some(()) = next_signal(&mut hup) => Trigger::Signal,
                else => return,
            };
            self.reload(trigger);
        }
    }

    /// Reads the file and, when it is valid, puts it in force (restart-only
    /// keys excepted). Logs and counts the result.
    pub fn reload(&mut self, trigger: Trigger) -> Outcome {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                self.last_text = None;
                let msg = format!("cannot read {}: {e}", self.path.display());
                self.log_failure(trigger, &msg);
                return Outcome::Failed(msg);
            }
        };
        if trigger == Trigger::File && self.last_text.as_deref() == Some(text.as_str()) {
            tracing::debug!(path = %self.path.display(), "config file event, text unchanged");
            return Outcome::Unchanged;
        }
        let result = Config::from_toml(&text, &self.env);
        self.last_text = Some(text);
        let new = match result {
            Ok(c) => c,
            Err(issues) => return self.failed(trigger, &issues),
        };
        let old = self.tx.borrow().config.clone();
        // The config table (crate::config::KEYS) says which keys only a restart applies.
        let kept = old.restart_only_changes(&new);
        let applied = new.keeping_restart_only(&old);
        let changed = changed_keys(&old, &applied);
        for key in &kept {
            tracing::warn!(key, "config change needs a restart; keeping the value in force");
        }
        if old.telemetry.log_level != applied.telemetry.log_level {
            self.apply_log_level(&applied.telemetry.log_level);
        }
        self.tx.send_replace(LiveConfig::new(applied));
        ReloadApplied { trigger: trigger.as_str(), changed: &changed }.emit(&self.metrics);
        Outcome::Applied { changed, kept }
    }

    fn failed(&self, trigger: Trigger, issues: &[ConfigIssue]) -> Outcome {
        let list = issues.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; ");
        ReloadRejected { trigger: trigger.as_str(), path: &self.path, issues: &list }.emit(&self.metrics);
        Outcome::Failed(list)
    }

    /// Counts a failed reload and logs it, rate-limited.
    fn log_failure(&self, trigger: Trigger, msg: &str) {
        ReloadFailed { trigger: trigger.as_str(), error: msg }.emit(&self.metrics);
    }

    fn apply_log_level(&self, level: &str) {
        match &self.log {
            Some(log) if log.pinned_by_env() => {
                tracing::warn!("telemetry.log_level changed, but RUST_LOG is set and keeps precedence")
            }
            Some(log) => {
                if let Err(e) = log.set_level(level) {
                    tracing::warn!(error = %e, "cannot apply telemetry.log_level");
                }
            }
            None => {}
        }
    }
}

/// The running reloader; dropping it stops the watcher and the task.
pub struct ReloadTask {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReloadTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Watcher = notify_debouncer_full::Debouncer<
    notify_debouncer_full::notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

#[cfg(unix)]
type SignalStream = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type SignalStream = std::convert::Infallible;

#[cfg(unix)]
fn sighup_stream() -> Option<SignalStream> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn sighup_stream() -> Option<SignalStream> {
    None
}

/// The next SIGHUP; pending forever without a signal stream.
async fn next_signal(hup: &mut Option<SignalStream>) -> Option<()> {
    #[cfg(unix)]
    if let Some(s) = hup {
        return s.recv().await;
    }
    let _ = hup;
    std::future::pending().await
}

/// Whether an event can change what the file reads. Opens and reads are
/// not: reading the file ourselves must not trigger another reload.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The config file's folder (`.` for a bare name) and file name.
fn split_path(path: &Path) -> (PathBuf, Option<&std::ffi::OsStr>) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (dir, path.file_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_path_of_a_bare_name_is_the_current_folder() {
        assert_eq!(split_path(Path::new("sidewire.toml")).0, PathBuf::from("."));
        assert_eq!(split_path(Path::new("config/sidewire.toml")).0, PathBuf::from("config"));
    }
}
