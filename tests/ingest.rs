//! POST /api/v1/ingest against a real server (contract sections 1-2).

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn accepts_a_batch_and_reports_seqs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(config_in(dir.path())).await;
    let c = client();
    let (status, body) = ingest(&c, &srv.base, &json!([{"type": "a"}, {"type": "b", "id": "x1"}, {"type": "c", "id": "x1"}])).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": 2, "duplicates": 1, "seqs": [1, 2, 2]}));
    srv.stop().await;
}
