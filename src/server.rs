//! Building the server from a config and running it: the accept loop, the
//! split between WebSocket upgrades (handled by [`crate::ws`]) and the warp
//! routes, HTTP metrics, and graceful shutdown.

use crate::activity::Activity;
use crate::app::App;
use crate::cluster::{Cluster, ClusterOptions};
use crate::config::{Config, ConfigRx, LiveConfig, PluginKind};
use crate::conn::{limit, Gate, GuardedIo, RequestDeadline, Settings, TrackedBody};
use crate::hub::{Delivery, Hub};
use crate::internal_events::AcceptFailed;
use crate::metrics::Metrics;
use crate::persist::postgres::PostgresPlugin;
use crate::persist::shared::SharedStore;
use crate::persist::{PersistCallback, PersistError};
use crate::pipeline::{Outlet, Pipeline, Sinks};
use crate::stats::Stats;
use crate::version::VERSION;
use crate::ws::WsState;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::Instrument;
use warp::reply::Response;

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config: {0}")]
    Config(String),
    // Not `#[from]`: that would also make the inner error the source, and
    // a report of the chain would say it twice.
    #[error("persist plugin: {0}")]
    Persist(PersistError),
    #[error("cannot listen: {0}")]
    Io(std::io::Error),
}

impl From<PersistError> for StartError {
    fn from(e: PersistError) -> Self {
        StartError::Persist(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

/// Builds a server; lets a library user plug in their own persist callback.
pub struct ServerBuilder {
    config: Config,
    plugin: Option<Arc<dyn PersistCallback>>,
    config_rx: Option<ConfigRx>,
    port: Option<u16>,
}

impl ServerBuilder {
    pub fn new(config: Config) -> Self {
        Self { config, plugin: None, config_rx: None, port: None }
    }

    /// The port the listener is bound to, for the default replica name
    /// (`"<hostname>:<port>"`); without it, the port of `server.listen`.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Uses this plugin instead of the one `persist.plugin` names.
    pub fn persist(mut self, plugin: Arc<dyn PersistCallback>) -> Self {
        self.plugin = Some(plugin);
        self
    }

    /// Follows this config channel (hot reload) instead of a fixed config.
    pub fn config_channel(mut self, rx: ConfigRx) -> Self {
        self.config_rx = Some(rx);
        self
    }

    /// Serves on `listener` until `shutdown` completes, then drains:
    /// stops accepting, closes WebSockets with 1001, finishes in-flight
    /// requests, stores what is queued and closes the store.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let port = listener.local_addr()?.port();
        let running = self.port(port).start().await?;
        running.serve(listener, shutdown).await;
        Ok(())
    }

    /// Opens the store, recovers state and starts the background tasks.
    pub async fn start(self) -> Result<Running, StartError> {
        let issues = self.config.validate();
        let plugin_is_custom = self.plugin.is_some();
        let fatal: Vec<_> =
            issues.into_iter().filter(|(k, _)| !(plugin_is_custom && k.starts_with("persist."))).collect();
        if !fatal.is_empty() {
            return Err(StartError::Config(
                fatal.iter().map(|(k, m)| format!("{k}: {m}")).collect::<Vec<_>>().join("; "),
            ));
        }
        let config_rx = match self.config_rx {
            Some(rx) => rx,
            None => watch::channel(LiveConfig::new(self.config.clone())).1,
        };
        let config = config_rx.borrow().config.clone();
        let port = self.port.or_else(|| config.listen_addr().ok().map(|a| a.port())).unwrap_or(0);
        let cluster_options = ClusterOptions::from_config(&config, port);
        // The shared store is also the cluster's.
        let (plugin, shared): (Arc<dyn PersistCallback>, Option<Arc<dyn SharedStore>>) = match self.plugin {
            Some(p) => (p, None),
            None if config.persist.plugin == PluginKind::Postgres => {
                let options = crate::persist::postgres_options(&config, &cluster_options.replica_name);
                let pg = Arc::new(PostgresPlugin::new(options)?);
                (pg.clone(), Some(pg))
            }
            None => (crate::persist::from_config(&config)?, None),
        };
        let metrics = Arc::new(Metrics::new());
        metrics.init_plugin(plugin.name());
        let recovered = plugin.recover().await?;
        let durable = recovered.stats.clone().unwrap_or_default();
        let next_seq = recovered.last_seq.max(durable.last_seq) + 1;
        tracing::info!(plugin = plugin.name(), next_seq, events_total = durable.events_total, "store opened");
        let stats = Arc::new(Stats::new(durable.clone()));
        let activity = Arc::new(Activity::new(plugin.clone(), config.activity.buffer_size));
        activity.record(&recovered.recent);
        let hub = Arc::new(Hub::new((config.ws.send_queue_len * 4).max(8192)));
        let gauges_changed = Arc::new(Notify::new());
        let delivery = Delivery {
            stats: stats.clone(),
            activity: activity.clone(),
            hub: hub.clone(),
            gauges_changed: gauges_changed.clone(),
        };
        let cluster = shared.clone().map(|store| {
            let options = cluster_options;
            tracing::info!(replica = %options.replica_name, bus = options.bus.label(), store = %store.describe(),
                "joining the cluster");
            Arc::new(Cluster::start(
                options,
                store,
                delivery.clone(),
                stats.clone(),
                metrics.clone(),
                recovered.last_seq,
            ))
        });
        let outlet = match &cluster {
            Some(c) => Outlet::Cluster(c.clone()),
            None => Outlet::Local(delivery),
        };
        let pipeline = Pipeline::start(
            Sinks { plugin: plugin.clone(), metrics: metrics.clone(), outlet },
            config_rx.clone(),
            durable,
            next_seq,
            &recovered.ids,
        );
        if let Some(relay) = cluster.as_ref().and_then(|c| c.relay()) {
            relay.serve(Arc::new(pipeline.clone()));
        }
        let app = Arc::new(App {
            config: config_rx.clone(),
            pipeline,
            stats: stats.clone(),
            activity: activity.clone(),
            plugin: plugin.clone(),
            metrics: metrics.clone(),
            hub: hub.clone(),
            ws: Arc::new(crate::ws::State {
                config: config_rx.clone(),
                stats: stats.clone(),
                activity: activity.clone(),
                plugin: plugin.clone(),
                shared,
                metrics: metrics.clone(),
                hub,
                sockets: WsState::new(),
            }),
            cluster,
        });
        let pusher = tokio::spawn(crate::ws::stats_pusher(app.ws.clone(), gauges_changed));
        let log_flusher = tokio::spawn(app.metrics.repeated.clone().run_flusher());
        let retention =
            crate::persist::retention_task::spawn(app.plugin.clone(), app.config.clone(), app.metrics.clone());
        let metrics_listener = match config.metrics.listen_addr().map_err(StartError::Config)? {
            Some(addr) => Some(bind(addr)?),
            None => None,
        };
        Ok(Running { app, pusher, log_flusher, retention: Some(retention), metrics_listener })
    }
}

/// A started server, not yet accepting.
pub struct Running {
    pub app: Arc<App>,
    pusher: tokio::task::JoinHandle<()>,
    /// Writes the summary lines of rate-limited warnings (see [`crate::log_throttle`]).
    log_flusher: tokio::task::JoinHandle<()>,
    /// Retention and store gauges; stopped before the store closes.
    retention: Option<crate::persist::retention_task::RetentionTask>,
    /// The separate metrics listener (`metrics.listen`), bound at start.
    metrics_listener: Option<TcpListener>,
}

/// Pending connections the kernel queues before `accept` (the OS default of
/// 128 drops SYNs when hundreds of dashboards reconnect at once, which
/// costs each dropped one a 1 s retransmit).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, so a restart
/// does not wait for old connections in TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// First wait after a failed `accept`; doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait after failed `accept`s in a row (out of file descriptors).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The front door's settings for `config`; warns when the configured
/// connection limit had to be lowered to fit the open-file limit.
fn front_door_settings(config: &Config, auto_max: usize) -> Settings {
    let (settings, lowered) = Settings::from_config(&config.server, auto_max);
    if lowered {
        tracing::warn!(
            configured = config.server.max_http_connections,
            using = settings.max_connections,
            "server.max_http_connections is above 90% of the open-file limit (less a reserve); using that instead \
             (raise the limit, e.g. LimitNOFILE= or ulimit -n, to allow more)"
        );
    }
    settings
}

/// The peer address of a request, for warp filters.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Running {
    /// Where the separate metrics listener (`metrics.listen`) is bound, if
    /// one is configured: the real port when the config said port 0.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves `listener` until `shutdown` completes, then shuts down (see
    /// [`ServerBuilder::run`]).
    pub async fn serve(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let metrics_listener = self.metrics_listener.take().map(|l| MetricsListener::spawn(l, &self.app));
        let graceful = GracefulShutdown::new();
        let mut door = FrontDoor::new(self.app.clone());
        if let Ok(addr) = listener.local_addr() {
            door.log_listening(addr);
        }
        accept_until(&listener, &mut door, &graceful, shutdown).await;
        drop(listener);
        self.shut_down(graceful, metrics_listener).await;
    }

    /// The shutdown steps, in order: WebSockets get 1001, in-flight requests
    /// finish, the sockets drain, queued events are stored (each within
    /// `server.shutdown_timeout_secs`); then the background tasks stop and
    /// the store closes.
    async fn shut_down(mut self, graceful: GracefulShutdown, metrics: Option<MetricsListener>) {
        let app = self.app.clone();
        tracing::info!("shutting down: closing WebSockets, finishing requests, flushing the store");
        let grace = Duration::from_secs(app.config.borrow().config.server.shutdown_timeout_secs);
        app.ws.sockets.shutdown();
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("in-flight requests did not finish in time");
        }
        let deadline = Instant::now() + grace;
        while app.ws.sockets.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(relay) = app.cluster.as_ref().and_then(|c| c.relay()) {
            // Hands the cluster's writing to another replica before draining.
            relay.stop_writing().await;
        }
        if tokio::time::timeout(grace, app.pipeline.close()).await.is_err() {
            tracing::error!("queued events could not all be stored before the shutdown deadline");
        }
        self.pusher.abort();
        if let Some(metrics) = metrics {
            metrics.stop().await;
        }
        drop(self.retention.take());
        if let Some(cluster) = &app.cluster {
            cluster.close().await;
        }
        if let Err(e) = app.plugin.close().await {
            tracing::warn!(error = %e, "closing the store failed");
        }
        self.log_flusher.abort();
        app.metrics.repeated.flush_all();
        tracing::info!("stopped");
    }
}

/// The separate metrics listener (`metrics.listen`): warp's own server on
/// its own accept loop, outside the front door's connection count.
struct MetricsListener {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsListener {
    fn spawn(listener: TcpListener, app: &App) -> Self {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics listening (GET /metrics, GET /healthz)");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let routes = crate::http::metrics_listener_routes(app.http_state());
        let server = warp::serve(routes).incoming(listener).graceful(async {
            let _ = stopped.await;
        });
        Self { stop, task: tokio::spawn(server.run()) }
    }

    /// Stops accepting and waits (up to 2 s) for scrapes in flight.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Accepts connections until `shutdown` completes, handing each to `door`.
/// A failed `accept` (EMFILE and friends) leaves the connection queued, so
/// retrying at once would spin: it backs off, and logs rarely.
async fn accept_until(
    listener: &TcpListener,
    door: &mut FrontDoor,
    graceful: &GracefulShutdown,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    door.serve(stream, peer, graceful);
                }
                Err(e) => {
                    AcceptFailed { error: &e, open_connections: door.gate.open(), retry_in_ms: backoff.as_millis() as u64 }
                        .emit(&door.app.metrics);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut shutdown => return,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
            _ = &mut shutdown => return,
        }
    }
}

/// What every accepted connection goes through: admission at the
/// [`Gate`], the deadlines of [`GuardedIo`] and hyper's HTTP/1 with
/// upgrades, under settings re-read from the config whenever it changed
/// (a reload applies to new connections).
struct FrontDoor {
    app: Arc<App>,
    routes: crate::http::Routes,
    http: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    gate: Gate,
    config_rx: ConfigRx,
    settings: Settings,
    /// The automatic connection limit (from the open-file limit at start).
    auto_max: usize,
}

impl FrontDoor {
    fn new(app: Arc<App>) -> Self {
        let routes = crate::http::routes(app.http_state(), &crate::ws::PATHS);
        let mut http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        // Deadlines are enforced by `GuardedIo` (idle before and between
        // requests, a late head, a response the client does not take) and
        // the handlers (a late body); hyper's own header timeout (30 s by
        // default) would cut a head short of `request_timeout_secs` and
        // without the contract's 408 body.
        http.http1().keep_alive(true).timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(None);
        let gate = Gate::new(&app.metrics);
        let auto_max = limit::auto_max_connections(limit::nofile_soft_limit());
        let mut config_rx = app.config.clone();
        let settings = front_door_settings(&config_rx.borrow_and_update().config, auto_max);
        app.metrics.http_max_connections.set(settings.max_connections as i64);
        Self { routes, http: http.http1_only(), gate, config_rx, settings, auto_max, app }
    }

    fn log_listening(&self, addr: SocketAddr) {
        let s = &self.settings;
        tracing::info!(
            %addr,
            version = VERSION,
            max_http_connections = s.max_connections,
            open_file_limit = %limit::nofile_soft_limit().map_or_else(|| "unknown".to_string(), |n| n.to_string()),
            idle_timeout_secs = s.idle.as_secs(),
            request_timeout_secs = s.request.as_secs(),
            write_timeout_secs = s.write.as_secs(),
            "sidewire listening"
        );
    }

    /// Admits `stream` (or closes it at once, at capacity) and spawns its
    /// HTTP connection, watched by `graceful` for shutdown.
    fn serve(&mut self, stream: TcpStream, peer: SocketAddr, graceful: &GracefulShutdown) {
        if self.config_rx.has_changed().unwrap_or(false) {
            self.settings = front_door_settings(&self.config_rx.borrow_and_update().config, self.auto_max);
        }
        let Some(slot) = self.gate.admit(&self.settings) else {
            // Closed at once: the client sees a reset or EOF and can retry
            // elsewhere; the descriptor is free again right away.
            drop(stream);
            tracing::debug!(%peer, limit = self.settings.max_connections, "connection refused: at capacity");
            return;
        };
        let _ = stream.set_nodelay(true);
        let conn = self.gate.conn_state(&self.settings);
        let io = GuardedIo::new(stream, conn.clone(), slot);
        let (app, routes) = (self.app.clone(), self.routes.clone());
        let service = hyper::service::service_fn(move |req| {
            let (deadline, in_service) = conn.begin_request();
            let res = handle(app.clone(), routes.clone(), peer, deadline, req);
            async move {
                let res = res.await?;
                // The connection leaves HTTP: no deadline applies any more.
                if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    in_service.upgraded();
                    return Ok::<_, Infallible>(res.map(|b| TrackedBody::new(b, None)));
                }
                Ok(res.map(|b| TrackedBody::new(b, Some(in_service))))
            }
        });
        let conn = self.http.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection error");
            }
        });
    }
}

/// One HTTP request, run under its `http.request` span (parent: the
/// caller's `traceparent`), which gets the matched route and status at the end.
async fn handle(
    app: Arc<App>,
    routes: crate::http::Routes,
    peer: SocketAddr,
    deadline: RequestDeadline,
    mut req: http::Request<Incoming>,
) -> Result<Response, Infallible> {
    req.extensions_mut().insert(deadline);
    // Scrapes and probes get no span: exported every few seconds by every
    // Prometheus and orchestrator, they would drown the traces that matter.
    let probe = matches!(req.uri().path(), "/metrics" | "/healthz" | "/readyz");
    let span = if probe { tracing::Span::none() } else { crate::telemetry::request_span(req.method(), req.headers()) };
    async move {
        let started = Instant::now();
        // Only a GET can be an upgrade; any other method on a WebSocket path
        // goes the way of every wrong method: 405 with `Allow: GET`.
        let upgrade = match crate::ws::PATHS.iter().find(|p| **p == req.uri().path()) {
            Some(path) if req.method() == http::Method::GET => Some(*path),
            _ => None,
        };
        let (route, res) = if let Some(route) = upgrade {
            (route, crate::ws::upgrade(app.ws.clone(), peer, req).await)
        } else {
            req.extensions_mut().insert(PeerAddr(peer));
            routes.respond(req).await
        };
        app.metrics.observe_http(route, res.status().as_u16(), started.elapsed().as_secs_f64());
        crate::telemetry::record_response(&tracing::Span::current(), route, res.status().as_u16());
        Ok(res)
    }
    .instrument(span)
    .await
}
