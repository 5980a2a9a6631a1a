//! [`App`]: the running server's shared parts, built once by
//! [`ServerBuilder::start`](crate::server::ServerBuilder::start). Handlers
//! never see all of it: the HTTP routes get [`crate::http::State`] (split
//! further per handler) and the dashboard sockets [`crate::ws::State`].

use crate::activity::Activity;
use crate::cluster::Cluster;
use crate::config::ConfigRx;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::persist::PersistCallback;
use crate::pipeline::Pipeline;
use crate::stats::Stats;
use std::sync::Arc;

/// Everything the server's tasks share.
pub struct App {
    /// The config in force (hot-reloadable parts are read per use).
    pub config: ConfigRx,
    pub pipeline: Pipeline,
    pub stats: Arc<Stats>,
    pub activity: Arc<Activity>,
    pub plugin: Arc<dyn PersistCallback>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    /// The dashboard sockets' state (their part of this, and their counts).
    pub ws: Arc<crate::ws::State>,
    /// Several replicas (`persist.plugin = "postgres"`): the sequencer, bus
    /// and heartbeat of this one.
    pub cluster: Option<Arc<Cluster>>,
}

impl App {
    /// The parts the HTTP handlers use.
    pub fn http_state(&self) -> crate::http::State {
        crate::http::State {
            config: self.config.clone(),
            pipeline: self.pipeline.clone(),
            stats: self.stats.clone(),
            activity: self.activity.clone(),
            plugin: self.plugin.clone(),
            metrics: self.metrics.clone(),
            openapi: crate::api_docs::openapi_bytes(),
            cluster: self.cluster.clone(),
        }
    }
}
