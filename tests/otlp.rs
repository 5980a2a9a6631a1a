//! OpenTelemetry export end to end: a request carrying a W3C `traceparent`
//! produces `http.request` → `ingest` → `persist` spans in the caller's
//! trace, exported over OTLP/HTTP (protobuf) to a collector.
//!
//! The global tracing subscriber can be installed once per process, so this
//! binary holds one test, apart from the other integration tests (`tests/it/`,
//! whose harness it shares).

#[path = "it/common/mod.rs"]
mod common;

use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// What the collector received: one decoded request per POST to /v1/traces.
type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// A minimal OTLP/HTTP collector: records every POST /v1/traces, answers 200.
async fn collector() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let ok = req.method() == http::Method::POST
                            && req.uri().path() == "/v1/traces"
                            && req.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let status = match (ok, ExportTraceServiceRequest::decode(body.as_ref())) {
                            (true, Ok(decoded)) => {
                                store.lock().unwrap().push(decoded);
                                200
                            }
                            _ => 400,
                        };
                        let mut res = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn spans_of(received: &Received) -> Vec<Span> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .flat_map(|rs| rs.scope_spans.iter())
        .flat_map(|ss| ss.spans.iter().cloned())
        .collect()
}

fn service_names(received: &Received) -> Vec<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .filter_map(|rs| rs.resource.as_ref())
        .flat_map(|res| res.attributes.iter())
        .filter(|kv| kv.key == "service.name")
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn ingest_spans_join_the_callers_trace_and_reach_the_collector() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (addr, received) = rt.block_on(collector());

    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.telemetry.otlp_endpoint = format!("http://{addr}");
    // Telemetry is set up outside the runtime, as the binary does.
    let telemetry = sidewire::telemetry::init(&config.telemetry).expect("telemetry starts");
    assert!(telemetry.exporting());

    let srv = rt.block_on(TestServer::start(config));
    let status = rt.block_on(async {
        client()
            .post(srv.url("/api/v1/ingest"))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
            .body(r#"{"type": "traced", "id": "t-1"}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 202);

    // The batch processor exports on a timer; flush instead of waiting for it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        telemetry.flush();
        let spans: Vec<Span> = spans_of(&received).into_iter().filter(|s| hex(&s.trace_id) == TRACE_ID).collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        if ["http.request", "ingest", "persist"].iter().all(|n| names.contains(n)) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans in trace {TRACE_ID} so far: {names:?}; all: {:?}",
            spans_of(&received).iter().map(|s| (s.name.clone(), hex(&s.trace_id))).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
    let request = by_name("http.request");
    let ingest = by_name("ingest");
    let persist = by_name("persist");
    // The request continues the caller's span; ingest and persist nest under it.
    assert_eq!(hex(&request.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(ingest.parent_span_id, request.span_id);
    assert_eq!(persist.parent_span_id, ingest.span_id);
    // Server kind, and the route and status recorded after the response.
    assert_eq!(request.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32);
    let attr = |s: &Span, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
    };
    assert!(attr(request, "route").is_some_and(|v| v.contains("/api/v1/ingest")), "{:?}", request.attributes);
    assert!(attr(request, "status").is_some_and(|v| v.contains("202")), "{:?}", request.attributes);
    assert!(service_names(&received).iter().all(|n| n == "sidewire"));
    assert!(!service_names(&received).is_empty());

    rt.block_on(srv.stop());
    // Shutting down flushes and stops the exporter without hanging.
    let t = Instant::now();
    drop(telemetry);
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(rt);
}
