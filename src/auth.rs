//! Bearer-token checks shared by the HTTP routes and the WebSocket upgrade
//! (contract section 4): ingest tokens on `POST /api/v1/ingest`, dashboard
//! tokens on the read endpoints and the WebSocket. An empty token list
//! leaves that side open.

use crate::error::{ApiError, ErrorCode};

/// The 401 message of a missing or wrong dashboard token (REST and WebSocket).
pub const DASHBOARD_TOKEN_REQUIRED: &str = "a dashboard token is required (Authorization: Bearer or ?token=)";
/// The 401 message of a missing or wrong ingest token.
pub const INGEST_TOKEN_REQUIRED: &str = "a valid ingest token is required: Authorization: Bearer <token>";

/// Dashboard read auth: `Authorization: Bearer`, else `?token=`; open when
/// `tokens` is empty.
pub fn dashboard(
    tokens: &[crate::config::Secret],
    headers: &http::HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ApiError> {
    if tokens.is_empty() || token_ok(tokens, bearer(headers).or(query_token)) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, DASHBOARD_TOKEN_REQUIRED))
    }
}

/// Ingest auth: `Authorization: Bearer` only; open when `tokens` is empty.
pub fn ingest(tokens: &[crate::config::Secret], headers: &http::HeaderMap) -> Result<(), ApiError> {
    if tokens.is_empty() || token_ok(tokens, bearer(headers)) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Unauthorized, INGEST_TOKEN_REQUIRED))
    }
}

/// The bearer token of a request: `Authorization: Bearer <t>`.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `given` equals one of `tokens`, in time that does not depend on
/// where they differ.
fn token_ok(tokens: &[crate::config::Secret], given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = given else { return false };
    let mut ok = subtle::Choice::from(0u8);
    for t in tokens {
        // Equal lengths compare every byte; a length mismatch still walks
        // the longer input so timing does not reveal a prefix match.
        let (a, b) = (t.expose().as_bytes(), given.as_bytes());
        let n = a.len().max(b.len());
        let mut same = subtle::Choice::from((a.len() == b.len()) as u8);
        for i in 0..n {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            same &= x.ct_eq(&y);
        }
        ok |= same;
    }
    ok.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let tokens: Vec<crate::config::Secret> = vec!["tok-alpha".into(), "tok-beta".into()];
        assert!(token_ok(&tokens, Some("tok-beta")));
        assert!(!token_ok(&tokens, Some("tok-alph")));
        assert!(!token_ok(&tokens, Some("tok-alphaa")));
        assert!(!token_ok(&tokens, Some("")));
        assert!(!token_ok(&tokens, None));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
