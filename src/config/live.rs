//! The config in force: a [`LiveConfig`] on a watch channel ([`ConfigRx`]),
//! replaced as a whole by a reload (see `crate::reload`).

use super::Config;
use crate::stats::CounterRule;
use std::sync::Arc;

/// A loaded config with what is derived from it, computed once per (re)load.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    pub config: Config,
    /// The counter rules in force.
    pub counters: Vec<CounterRule>,
    /// What ingest validation needs (reserved stat names).
    pub rules: crate::event::Rules,
}

impl LiveConfig {
    pub fn new(config: Config) -> Arc<LiveConfig> {
        let counters = config.stats.counter_rules();
        let mut reserved: std::collections::HashSet<String> =
            crate::stats::BUILTIN_STATS.iter().map(|s| s.to_string()).collect();
        reserved.extend(counters.iter().map(|c| c.name.clone()));
        Arc::new(LiveConfig { config, counters, rules: crate::event::Rules { reserved_stats: reserved } })
    }
}

/// The config in force; a reload sends a new value.
pub type ConfigRx = tokio::sync::watch::Receiver<Arc<LiveConfig>>;
