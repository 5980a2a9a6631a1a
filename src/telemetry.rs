//! Logging and tracing through `tracing`: pretty or JSON log lines whose
//! level can change at run time (hot reload, [`LogHandle`]), and, when
//! `telemetry.otlp_endpoint` is set, OpenTelemetry spans exported over
//! OTLP/HTTP (protobuf) with a batch processor.
//!
//! Every HTTP request runs under an `http.request` span ([`request_span`])
//! whose parent is the W3C `traceparent` the caller sent, so the `ingest` and
//! `persist` spans join the backend's trace. Log lines inside a request carry
//! its trace id: pretty lines show it in the `http.request{..}` prefix, JSON
//! lines get a top-level `trace_id` field.
//!
//! Two filters, one per output:
//! - log lines follow `telemetry.log_level` (or `RUST_LOG`), reloadable; spans
//!   at INFO and above are always kept for the log layer, so a line logged at
//!   `warn` inside a request still shows the request and its trace id;
//! - exported spans do not depend on the log level: sidewire's spans down to
//!   DEBUG (`persist` is one), other crates' at INFO, and WARN/ERROR events as
//!   span events. Lowering the log level never silences traces.

use crate::config::{LogFormat, TelemetryConfig};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt;
use std::time::Duration;
use tracing::{Level, Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, FilterExt, LevelFilter};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The path OTLP/HTTP collectors take spans on.
const TRACES_PATH: &str = "/v1/traces";
/// Per-export timeout; a collector that hangs never blocks the server (the
/// batch processor runs on its own thread), but shutdown waits this long at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Changes the log filter of a running process.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` chose the filter at start; it keeps precedence over the config.
    from_env: bool,
}

impl LogHandle {
    pub fn set_level(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        self.handle.reload(f).map_err(|e| e.to_string())
    }

    /// True when `RUST_LOG` set the filter at start: a reload then leaves it alone.
    pub fn pinned_by_env(&self) -> bool {
        self.from_env
    }
}

/// Setting up telemetry failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// What [`init`] installed. Keep it for the life of the process and drop it
/// after the server stopped: dropping flushes the spans still queued and
/// shuts the exporter down.
pub struct Telemetry {
    log: LogHandle,
    /// Present when spans are exported.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn log_handle(&self) -> LogHandle {
        self.log.clone()
    }

    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans queued so far (blocking: call it off the async runtime).
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                tracing::warn!(error = %e, "flushing spans failed");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                // Logging may be the thing shutting down: stderr is certain.
                eprintln!("sidewire: exporting the last spans failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber (and, with an OTLP endpoint, the span
/// exporter) and the W3C trace-context propagator. `RUST_LOG`, when set,
/// wins over `telemetry.log_level`. Call it once, outside the async runtime.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let env = std::env::var("RUST_LOG").ok().and_then(|v| EnvFilter::try_new(v).ok());
    let from_env = env.is_some();
    let filter =
        env.unwrap_or_else(|| EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info")));
    let (filter, handle) = reload::Layer::new(filter);
    // Request spans stay enabled for the log layer whatever the level: they
    // print nothing by themselves, but give every line its context.
    // The hints let tracing (and the `log` bridge behind tungstenite's
    // per-frame `log::trace!`) rule out finer levels once per callsite instead
    // of asking the filter at every hit: without them the hot paths spent
    // ~15% of their CPU in filter calls.
    let log_filter = filter
        .or(filter_fn(|m: &Metadata<'_>| m.is_span() && *m.level() <= Level::INFO)
            .with_max_level_hint(LevelFilter::INFO));
    let log_layer = match config.log_format {
        // Logs go to stderr; stdout is for command output (e.g. `emit`).
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .event_format(JsonWithTraceId(tracing_subscriber::fmt::format().json().with_current_span(true)))
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours for a terminal only, not for files and log collectors.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .with_filter(log_filter)
            .boxed(),
    };

    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let provider = match config.otlp_endpoint.trim() {
        "" => None,
        endpoint => Some(tracer_provider(endpoint)?),
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sidewire"))
            .with_filter(filter_fn(exported).with_max_level_hint(LevelFilter::DEBUG))
    });
    tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if provider.is_some() {
        tracing::info!(endpoint = %crate::config::redact_url(&traces_url(&config.otlp_endpoint)), "exporting spans over OTLP/HTTP");
    }
    Ok(Telemetry { log: LogHandle { handle, from_env }, provider })
}

/// What the span exporter sees (independent of the log level).
fn exported(m: &Metadata<'_>) -> bool {
    if m.is_span() {
        *m.level() <= Level::INFO || (m.target().starts_with("sidewire") && *m.level() <= Level::DEBUG)
    } else {
        *m.level() <= Level::WARN
    }
}

/// The collector URL: a base (`http://collector:4318`) gets `/v1/traces`;
/// a URL already ending in it is taken as is.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.ends_with(TRACES_PATH) {
        endpoint.to_string()
    } else {
        format!("{endpoint}{TRACES_PATH}")
    }
}

fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let url = traces_url(endpoint);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(TelemetryError::Exporter(format!(
            "`{}` is not an http:// or https:// URL",
            crate::config::redact_url(endpoint)
        )));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("sidewire")
        .with_attribute(opentelemetry::KeyValue::new("service.version", crate::version::VERSION))
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// The trace a span belongs to, kept in the span's registry extensions so
/// log lines can carry it.
#[derive(Clone, Copy)]
struct TraceIdExt(TraceId);

/// Reads W3C headers (`traceparent`, `tracestate`) from a request.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span one HTTP request runs under: `http.request` with `method`, and
/// `route` and `status` left empty for [`record_response`]. Its parent is
/// the context the caller propagated (`traceparent`), when there is one.
pub fn request_span(method: &http::Method, headers: &http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        target: "sidewire::http",
        "http.request",
        method = %method,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let remote = parent.span().span_context().clone();
    // Without the OpenTelemetry layer this fails (nothing to parent): the
    // caller's trace id is still worth logging.
    let _ = span.set_parent(parent);
    let local = span.context().span().span_context().clone();
    let trace_id = if local.is_valid() {
        Some(local.trace_id())
    } else if remote.is_valid() {
        Some(remote.trace_id())
    } else {
        None
    };
    if let Some(id) = trace_id {
        span.record("trace_id", tracing::field::display(id));
        span.with_subscriber(|(sid, dispatch)| {
            if let Some(registry) = dispatch.downcast_ref::<Registry>() {
                if let Some(s) = registry.span(sid) {
                    s.extensions_mut().insert(TraceIdExt(id));
                }
            }
        });
    }
    span
}

/// Fills the request span's `route` and `status` once the answer is known.
pub fn record_response(span: &tracing::Span, route: &'static str, status: u16) {
    span.record("route", route);
    span.record("status", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// JSON log lines with a top-level `trace_id` when the event happened inside
/// a traced request.
struct JsonWithTraceId(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let trace_id =
            ctx.event_scope().and_then(|mut scope| scope.find_map(|s| s.extensions().get::<TraceIdExt>().map(|t| t.0)));
        let Some(trace_id) = trace_id else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The formatter writes one object and a newline: add the field last.
        match line.rfind('}') {
            Some(end) => {
                writer.write_str(&line[..end])?;
                write!(writer, ",\"trace_id\":\"{trace_id}\"")?;
                writer.write_str(&line[end..])
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(traces_url(" http://c/otlp "), "http://c/otlp/v1/traces");
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_inside_a_traced_request_carry_its_trace_id() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .event_format(JsonWithTraceId(tracing_subscriber::fmt::format().json().with_current_span(true)))
                .with_writer(move || writer.clone()),
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = request_span(&http::Method::POST, &headers);
            let _g = span.enter();
            tracing::info_span!("ingest").in_scope(|| tracing::warn!(n = 1, "inside"));
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{text}");
        assert_eq!(lines[1]["fields"]["message"], "inside");
    }
}
