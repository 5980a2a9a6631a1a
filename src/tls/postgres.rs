//! `persist.postgres_url` with libpq's TLS conventions, and the rustls
//! connector that tokio-postgres and the pool use.
//!
//! tokio-postgres itself knows `sslmode=disable|prefer|require` only, and
//! refuses the other libpq TLS parameters. [`parse`] takes them out of the
//! URL (both the `postgres://…?k=v` and the `k=v k=v` forms), hands the
//! rest to tokio-postgres, and keeps them as [`PgTls`]:
//!
//! | parameter | meaning here |
//! | --- | --- |
//! | `sslmode` | `disable`, `prefer` (the default, as in libpq: TLS when the server offers it, unverified), `require` (TLS, unverified), `verify-ca` (the chain against the roots), `verify-full` (the chain and the host name) |
//! | `sslrootcert` | PEM file of the CA(s) to trust; `system` for the system roots. Unset: the system roots for `verify-*`. As in libpq, `prefer`/`require` with a root file verify the chain too |
//! | `sslcert`, `sslkey` | a client certificate and its (unencrypted) key, both or neither |
//! | `sslsni` | `0` sends no SNI |
//! | `ssl_min_protocol_version`, `ssl_max_protocol_version` | `TLSv1.2` or `TLSv1.3` |
//!
//! What libpq also reads by default (`~/.postgresql/root.crt`,
//! `postgresql.crt`) is not read: name the files. `prefer` does not retry
//! without TLS after a failed handshake (libpq does); use `disable` for a
//! server whose TLS is broken.

use super::{explain, provider, read_certs, read_key, system_roots, NoVerification, Verifier};
use futures::future::BoxFuture;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ALL: &'static str = "disable, prefer, require, verify-ca or verify-full";

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq also has `allow` (plain first, TLS if refused): nothing
            // else here would fail without TLS, so it is `prefer`'s twin.
            "allow" => SslMode::Prefer,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    System,
}

/// What a server certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain(Roots),
    ChainAndName(Roots),
}

/// The TLS settings of a PostgreSQL URL (no secret: paths and modes only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    verify: Verify,
    client_cert: Option<(PathBuf, PathBuf)>,
    sni: bool,
    versions: (TlsVersion, TlsVersion),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsVersion {
    V12,
    V13,
}

impl TlsVersion {
    fn parse(key: &str, s: &str) -> Result<TlsVersion, String> {
        match s {
            "TLSv1.2" => Ok(TlsVersion::V12),
            "TLSv1.3" => Ok(TlsVersion::V13),
            "TLSv1" | "TLSv1.1" if key == "ssl_max_protocol_version" => {
                Err(format!("{key}={s}: TLS below 1.2 is not supported"))
            }
            // A minimum below 1.2 allows 1.2 too.
            "TLSv1" | "TLSv1.1" => Ok(TlsVersion::V12),
            _ => Err(format!("{key}={s}: expected TLSv1.2 or TLSv1.3")),
        }
    }
}

/// A `persist.postgres_url` taken apart: what tokio-postgres reads (with
/// its `ssl_mode` set) and the TLS settings.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
}

/// The URL parameters handled here rather than by tokio-postgres.
const TLS_KEYS: &[&str] =
    &["sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni", "ssl_min_protocol_version", "ssl_max_protocol_version"];

/// libpq TLS parameters with no equivalent here: refused rather than
/// silently ignored (each would weaken or change what is checked).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("sslcrl", "certificate revocation lists are not supported"),
    ("sslcrldir", "certificate revocation lists are not supported"),
    ("sslpassword", "encrypted client keys are not supported: give sslkey an unencrypted key"),
    ("sslcertmode", "not supported: a client certificate is sent when sslcert and sslkey are set"),
    ("sslcompression", "TLS compression is not supported"),
    ("requirepeer", "Unix-socket peer checks are not supported"),
];

/// Takes a PostgreSQL URL apart (no I/O: files are only named here; see
/// [`PgTls::connector`]). Errors name the parameter, never the password.
pub fn parse(url: &str) -> Result<PgTarget, String> {
    let (rest, params) = split(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| chain(&e))?;
    let get = |k: &str| params.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    for (key, why) in UNSUPPORTED {
        if get(key).is_some() {
            return Err(format!("{key}: {why}"));
        }
    }
    let root = match get("sslrootcert") {
        None | Some("") => None,
        Some("system") => Some(Roots::System),
        Some(path) => Some(Roots::File(PathBuf::from(path))),
    };
    let mode = match get("sslmode") {
        None | Some("") if root == Some(Roots::System) => SslMode::VerifyFull,
        None | Some("") => SslMode::Prefer,
        Some(m) => SslMode::parse(m).ok_or_else(|| format!("sslmode={m}: unknown mode; use {}", SslMode::ALL))?,
    };
    if root == Some(Roots::System) && !matches!(mode, SslMode::VerifyFull | SslMode::Disable) {
        return Err(format!(
            "sslmode={}: with sslrootcert=system only verify-full is allowed (as in libpq)",
            mode.as_str()
        ));
    }
    let verify = match (mode, root) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Verify::Nothing,
        // libpq: "if a root CA file exists, require behaves like verify-ca".
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, r) => Verify::Chain(r.unwrap_or(Roots::System)),
        (SslMode::VerifyFull, r) => Verify::ChainAndName(r.unwrap_or(Roots::System)),
    };
    let client_cert = match (get("sslcert").filter(|s| !s.is_empty()), get("sslkey").filter(|s| !s.is_empty())) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        (Some(_), None) => return Err("sslcert is set but sslkey is not: give both (or neither)".into()),
        (None, Some(_)) => return Err("sslkey is set but sslcert is not: give both (or neither)".into()),
    };
    let sni = match get("sslsni") {
        None | Some("1") => true,
        Some("0") => false,
        Some(v) => return Err(format!("sslsni={v}: expected 0 or 1")),
    };
    let min = get("ssl_min_protocol_version").map(|v| TlsVersion::parse("ssl_min_protocol_version", v)).transpose()?;
    let max = get("ssl_max_protocol_version").map(|v| TlsVersion::parse("ssl_max_protocol_version", v)).transpose()?;
    let versions = (min.unwrap_or(TlsVersion::V12), max.unwrap_or(TlsVersion::V13));
    if versions.0 > versions.1 {
        return Err("ssl_min_protocol_version is above ssl_max_protocol_version".into());
    }
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(PgTarget { config, tls: PgTls { mode, verify, client_cert, sni, versions } })
}

/// Parses the URL and reads what it names (root, client certificate and
/// key files): what `check-config` can check without a server.
pub fn check(url: &str) -> Result<(), String> {
    parse(url)?.tls.connector().map(|_| ())
}

/// An error of tokio-postgres with its causes ("error connecting to
/// server: Connection refused"), each said once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

impl PgTarget {
    /// `host1,host2 (sslmode=…)`, for messages.
    pub fn context(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        format!("{} (sslmode={})", hosts.join(","), self.tls.mode.as_str())
    }

    /// What went wrong with a connection, said once: a TLS failure with the
    /// host, the sslmode and what failed; anything else with its causes.
    pub fn describe(&self, e: &tokio_postgres::Error) -> String {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(x) = next {
            if let Some(f) = x.downcast_ref::<TlsFailure>() {
                return f.to_string();
            }
            next = x.source();
        }
        let text = chain(e);
        match text.strip_prefix("error performing TLS handshake: ") {
            Some(why) if why.contains("does not support TLS") => format!(
                "TLS with {} refused by the server: it does not support TLS (its ssl setting is off); \
                 use sslmode=disable or prefer, or turn TLS on at the server",
                self.context()
            ),
            Some(why) => format!("TLS with {} failed: {why}", self.context()),
            // Not about TLS: still say which server.
            None => format!("{text} (server {})", self.context()),
        }
    }
}

impl PgTls {
    /// `sslrootcert=FILE` or "the system roots", for messages.
    fn trust(&self) -> String {
        match &self.verify {
            Verify::Nothing => "(nothing: not verified)".into(),
            Verify::Chain(Roots::File(p)) | Verify::ChainAndName(Roots::File(p)) => {
                format!("sslrootcert ({})", p.display())
            }
            Verify::Chain(Roots::System) | Verify::ChainAndName(Roots::System) => {
                "the system roots (set sslrootcert to the provider's CA file)".into()
            }
        }
    }

    /// The connector for tokio-postgres and the pool: reads the files the
    /// URL names. Errors say which parameter and file.
    pub fn connector(&self) -> Result<MakeRustls, String> {
        let provider = provider();
        let versions: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            (TlsVersion::V12, TlsVersion::V12) => &[&rustls::version::TLS12],
            (TlsVersion::V13, _) => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        // The store, and the file's certificates (pinned, see [`Verifier`]).
        let roots = |r: &Roots| -> Result<(Arc<RootCertStore>, Vec<CertificateDer<'static>>), String> {
            match r {
                Roots::File(p) => {
                    let certs = read_certs(p, "sslrootcert")?;
                    let mut store = RootCertStore::empty();
                    for c in &certs {
                        store
                            .add(c.clone())
                            .map_err(|e| format!("sslrootcert: {}: not a usable CA certificate: {e}", p.display()))?;
                    }
                    Ok((Arc::new(store), certs))
                }
                Roots::System => Ok((system_roots(), Vec::new())),
            }
        };
        let verifier = |r: &Roots, check_name: bool| -> Result<Arc<Verifier>, String> {
            let (store, pinned) = roots(r)?;
            Verifier::new(store, pinned, check_name).map(Arc::new).map_err(|e| format!("sslrootcert: {e}"))
        };
        let builder = builder.dangerous();
        let builder = match &self.verify {
            Verify::Nothing => builder.with_custom_certificate_verifier(Arc::new(NoVerification(provider))),
            Verify::Chain(r) => builder.with_custom_certificate_verifier(verifier(r, false)?),
            Verify::ChainAndName(r) => builder.with_custom_certificate_verifier(verifier(r, true)?),
        };
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert, "sslcert")?, read_key(key, "sslkey")?)
                .map_err(|e| format!("sslcert/sslkey: the key does not fit the certificate: {e}"))?,
        };
        config.enable_sni = self.sni;
        // What libpq 17 sends; required by servers that accept direct TLS.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustls { inner: Arc::new(Connector { config: Arc::new(config), mode: self.mode, trust: self.trust() }) })
    }
}

struct Connector {
    config: Arc<ClientConfig>,
    mode: SslMode,
    trust: String,
}

/// tokio-postgres' TLS connector over rustls (cheap to clone).
#[derive(Clone)]
pub struct MakeRustls {
    inner: Arc<Connector>,
}

impl fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MakeRustls").field("sslmode", &self.inner.mode).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for MakeRustls {
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect { inner: self.inner.clone(), host: host.to_string() })
    }
}

/// One connection's handshake, to `host`.
pub struct RustlsConnect {
    inner: Arc<Connector>,
    host: String,
}

/// A failed handshake: host, sslmode and what failed.
#[derive(Debug)]
pub struct TlsFailure {
    host: String,
    mode: SslMode,
    what: String,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS with {} (sslmode={}) failed: {}", self.host, self.mode.as_str(), self.what)
    }
}

impl std::error::Error for TlsFailure {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for RustlsConnect {
    type Stream = RustlsStream<S>;
    type Error = TlsFailure;
    type Future = BoxFuture<'static, Result<RustlsStream<S>, TlsFailure>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let fail = |what: String| TlsFailure { host: self.host.clone(), mode: self.inner.mode, what };
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| fail(format!("`{}` is not a host name for TLS: {e}", self.host)))?;
            tokio_rustls::TlsConnector::from(self.inner.config.clone())
                .connect(name, stream)
                .await
                .map(RustlsStream)
                .map_err(|e| fail(explain(&e, &self.inner.trust).unwrap_or_else(|| e.to_string())))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// `tls-server-end-point` (RFC 5929) for SCRAM-SHA-256-PLUS: the hash
    /// of the server's certificate, with the hash of its signature algorithm
    /// (SHA-256 for MD5 and SHA-1). None for algorithms without one (Ed25519,
    /// RSA-PSS); SCRAM then runs without channel binding.
    fn channel_binding(&self) -> ChannelBinding {
        use sha2::Digest;
        let Some(cert) = self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match signature_hash(cert) {
            Some(256) => ChannelBinding::tls_server_end_point(sha2::Sha256::digest(cert).to_vec()),
            Some(384) => ChannelBinding::tls_server_end_point(sha2::Sha384::digest(cert).to_vec()),
            Some(512) => ChannelBinding::tls_server_end_point(sha2::Sha512::digest(cert).to_vec()),
            _ => ChannelBinding::none(),
        }
    }
}

/// The SHA-2 size to hash a certificate with for channel binding, from its
/// `signatureAlgorithm` (the second element of the outer DER SEQUENCE).
fn signature_hash(der: &[u8]) -> Option<u16> {
    /// (tag, content, rest) of one DER element.
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, mut b) = b.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |acc, x| (acc << 8) | *x as usize);
            b = &b[n..];
            len
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (0x30, cert, _) = element(der)? else { return None };
    let (0x30, _tbs, rest) = element(cert)? else { return None };
    let (0x30, alg, _) = element(rest)? else { return None };
    let (0x06, oid, _) = element(alg)? else { return None };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    match oid {
        [p @ .., last] if p == RSA => match last {
            4 | 5 | 11 | 14 => Some(256), // md5, sha1, sha256, sha224 (RFC 5929: at least SHA-256)
            12 => Some(384),
            13 => Some(512),
            _ => None,
        },
        [p @ .., last] if p == ECDSA_SHA2 => match last {
            1 | 2 => Some(256),
            3 => Some(384),
            4 => Some(512),
            _ => None,
        },
        o if o == ECDSA_SHA1 => Some(256),
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Splits a URL into the part tokio-postgres reads and the TLS parameters
/// (decoded), keeping everything else byte for byte.
fn split(url: &str) -> Result<(String, Vec<(String, String)>), String> {
    let ours = |k: &str| TLS_KEYS.contains(&k) || UNSUPPORTED.iter().any(|(u, _)| *u == k);
    let mut params = Vec::new();
    for prefix in ["postgres://", "postgresql://"] {
        let Some(rest) = url.strip_prefix(prefix) else { continue };
        // As tokio-postgres reads it: credentials up to the first `@`, then
        // host and path up to the first `?`.
        let after_credentials = rest.find('@').map_or(0, |i| i + 1);
        let Some(q) = rest[after_credentials..].find('?').map(|i| i + after_credentials) else {
            return Ok((url.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in rest[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if ours(&key) {
                params.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let mut out = format!("{prefix}{}", &rest[..q]);
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        return Ok((out, params));
    }
    // key=value form: drop our keys, keep every other byte as it was.
    let mut out = String::new();
    let mut at = 0;
    for (key, value, span) in key_values(url)? {
        if ours(&key) {
            out.push_str(&url[at..span.start]);
            at = span.end;
            params.push((key, value));
        }
    }
    out.push_str(&url[at..]);
    Ok((out, params))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "a URL parameter is not UTF-8 once decoded".to_string())
}

/// The `key = value` pairs of a libpq key/value string, each with its byte
/// span (as tokio-postgres reads them: `'quoted'` values, `\` escapes).
fn key_values(s: &str) -> Result<Vec<(String, String, std::ops::Range<usize>)>, String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ws = |c: u8| c.is_ascii_whitespace();
    loop {
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && !ws(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let key = s[start..i].to_string();
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(format!("expected `=` after `{key}`"));
        }
        i += 1;
        while i < b.len() && ws(b[i]) {
            i += 1;
        }
        let mut value = Vec::new();
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        loop {
            match b.get(i) {
                None if quoted => return Err("unterminated quoted connection parameter value".into()),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && ws(*c) => break,
                Some(b'\\') if i + 1 < b.len() => {
                    value.push(b[i + 1]);
                    i += 2;
                }
                Some(c) => {
                    value.push(*c);
                    i += 1;
                }
            }
        }
        let value = String::from_utf8(value).map_err(|_| format!("`{key}` is not UTF-8"))?;
        out.push((key, value, start..i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let t = parse(
            "postgres://u:p%40ss@db.example:5432/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(t.tls.mode, SslMode::VerifyFull);
        assert_eq!(t.tls.verify, Verify::ChainAndName(Roots::File("/ca.pem".into())));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(t.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let kv =
            parse("host=db user=u password='a b\\'c' sslmode=verify-ca sslrootcert='/my ca.pem' dbname=app").unwrap();
        assert_eq!(kv.tls.verify, Verify::Chain(Roots::File("/my ca.pem".into())));
        assert_eq!((kv.config.get_password(), kv.config.get_dbname()), (Some(&b"a b'c"[..]), Some("app")));
        assert_eq!(kv.context(), "db (sslmode=verify-ca)");
    }

    #[test]
    fn modes_follow_libpq() {
        let mode = |q: &str| parse(&format!("postgres://u@h/d{q}")).map(|t| (t.tls.mode, t.tls.verify));
        assert_eq!(mode("").unwrap(), (SslMode::Prefer, Verify::Nothing));
        assert_eq!(mode("?sslmode=disable").unwrap().0, SslMode::Disable);
        assert_eq!(mode("?sslmode=require").unwrap(), (SslMode::Require, Verify::Nothing));
        assert_eq!(mode("?sslmode=require&sslrootcert=/c").unwrap().1, Verify::Chain(Roots::File("/c".into())));
        assert_eq!(mode("?sslmode=verify-full").unwrap().1, Verify::ChainAndName(Roots::System));
        assert_eq!(mode("?sslrootcert=system").unwrap(), (SslMode::VerifyFull, Verify::ChainAndName(Roots::System)));
        assert!(mode("?sslrootcert=system&sslmode=require").unwrap_err().contains("verify-full"));
        let e = mode("?sslmode=verify_full").unwrap_err();
        assert!(e.contains("sslmode=verify_full") && e.contains("verify-full"), "{e}");
        assert!(mode("?sslcert=/c").unwrap_err().contains("sslkey"));
        assert!(mode("?sslcrl=/x").unwrap_err().starts_with("sslcrl"));
        assert!(mode("?ssl_min_protocol_version=TLSv1.3&ssl_max_protocol_version=TLSv1.2").is_err());
    }

    #[test]
    fn multi_host_urls_keep_their_hosts_and_session_attrs() {
        let t = parse("postgresql://u:pw@a:5432,b:5433/app?target_session_attrs=read-write&sslmode=require").unwrap();
        assert_eq!(t.config.get_hosts().len(), 2);
        assert_eq!(t.config.get_target_session_attrs(), tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        assert_eq!(t.context(), "a,b (sslmode=require)");
    }

    #[test]
    fn errors_never_carry_the_password() {
        for url in [
            "postgres://u:hunter2@h/d?sslmode=bogus",
            "postgres://u:hunter2@h/d?nonsense=1",
            "user=u password=hunter2 sslmode=x",
        ] {
            let e = parse(url).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(parse("postgres://u@h/d?nonsense=1").unwrap_err().contains("nonsense"));
    }

    #[test]
    fn missing_files_are_named() {
        let e = check("postgres://u@h/d?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(e.starts_with("sslrootcert: cannot read /nonexistent/ca.pem"), "{e}");
        assert!(check("postgres://u@h/d?sslmode=require").is_ok());
    }

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        // SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID sha384WithRSAEncryption } }
        let cert =
            [0x30, 0x0f, 0x30, 0x00, 0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
        assert_eq!(signature_hash(&cert), Some(384));
        assert_eq!(signature_hash(&cert[..5]), None);
    }
}
