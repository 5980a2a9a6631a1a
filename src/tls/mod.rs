//! TLS to the cluster's services (PostgreSQL and Redis, CONTRACT section 8):
//! the pieces both sides share. rustls with aws-lc-rs (the stack reqwest
//! already brings); no OpenSSL.
//!
//! - Trust: a PEM file of CA certificates, or the system roots
//!   ([`system_roots`], read once through rustls-native-certs).
//! - Verification levels ([`Verifier`]): the chain and the host name, or
//!   the chain only (libpq's `verify-ca`); or none (`require`,
//!   [`NoVerification`]); a handshake's own signatures are always checked.
//! - [`explain`]: what failed in a handshake, in words an operator can act
//!   on (unknown CA, host name mismatch, refused by the server, …), found in
//!   the error chain of either client library.
//! - [`postgres`]: libpq's URL parameters (`sslmode`, `sslrootcert`, …) and
//!   the connector for tokio-postgres and the pool.
//! - [`redis`]: `rediss://` with `broadcast.redis_ca_file` /
//!   `broadcast.redis_tls_insecure`.
//!
//! A leaf of the domain: `config` (validation), `persist` and `cluster`
//! import it; it imports nothing of the crate.

pub mod postgres;
pub mod redis;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The one crypto provider (aws-lc-rs, as reqwest's). Also installed as the
/// process default, which the Redis client's own TLS code uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            // Already set (by us or a library) is fine: it is only a fallback.
            let _ = CryptoProvider::install_default((*p).clone());
            p
        })
        .clone()
}

/// The operating system's CA certificates (read once). Empty when none
/// could be read; connections that need them then fail with "unknown CA".
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(errors = ?found.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "no system CA certificates found (install ca-certificates, or name a CA file)");
            }
            Arc::new(roots)
        })
        .clone()
}

/// The certificates of a PEM file, for `what` (the key or parameter that
/// named it, for the message).
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

/// A root store of the CA certificates in a PEM file.
pub fn read_roots(path: &Path, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, what)? {
        roots.add(cert).map_err(|e| format!("{what}: {}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1; not encrypted).
pub fn read_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!("{what}: {} holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", path.display())
    })
}

/// Checks the server certificate against trusted roots: the chain always,
/// the host name when `check_name` (libpq's `verify-full`; without it,
/// `verify-ca`: the server is one the CA vouches for, whichever its name).
///
/// A self-signed server certificate that is itself in the root file (made
/// with `openssl req -x509`, which marks it as a CA) is accepted as pinned,
/// as libpq accepts it; webpki alone refuses a CA as end entity.
#[derive(Debug)]
pub struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of the root file (none for the system roots).
    pinned: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl Verifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        pinned: Vec<CertificateDer<'static>>,
        check_name: bool,
    ) -> Result<Verifier, String> {
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| format!("no usable CA certificate: {e}"))?;
        Ok(Verifier { webpki, pinned, check_name })
    }
}

fn is_name_mismatch(e: &TlsError) -> bool {
    matches!(
        e,
        TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// webpki's `CaUsedAsEndEntity` (reached only through `Other`).
fn is_ca_as_end_entity(e: &TlsError) -> bool {
    matches!(e, TlsError::InvalidCertificate(CertificateError::Other(o)) if format!("{o:?}").contains("CaUsedAsEndEntity"))
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // webpki checks the chain (and dates) before the name: a name
            // error means everything else passed.
            Err(e) if !self.check_name && is_name_mismatch(&e) => Ok(ServerCertVerified::assertion()),
            Err(e) if is_ca_as_end_entity(&e) && self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) => {
                if self.check_name {
                    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                    rustls::client::verify_server_name(&parsed, server_name)?;
                }
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Accepts any server certificate (encryption without authentication:
/// libpq's `prefer`/`require` without a root certificate). The handshake's
/// signatures are still checked against the presented certificate.
#[derive(Debug)]
pub struct NoVerification(pub Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Which certificates a connection trusted, for messages ("unknown CA:
/// … not signed by a CA in {trust}").
pub type Trust<'a> = &'a str;

/// What failed in a TLS handshake, when `error` (or anything in its chain,
/// through `io::Error` wrappers) is a rustls error or a known refusal;
/// `None` when the error is not about TLS.
pub fn explain(error: &(dyn std::error::Error + 'static), trust: Trust<'_>) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<TlsError>() {
            return Some(explain_rustls(t, trust));
        }
        // The Redis client keeps its cause as `Arc<dyn Error>`, whose
        // `source()` skips the io::Error's own payload: open it here.
        if let Some(inner) = e.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            if let Some(found) = explain(&**inner, trust) {
                return Some(found);
            }
        }
        let io = e.downcast_ref::<std::io::Error>().or_else(|| e.downcast_ref::<Arc<std::io::Error>>().map(|a| &**a));
        if let Some(inner) = io.and_then(|io| io.get_ref()) {
            if let Some(found) = explain(inner, trust) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

fn explain_rustls(e: &TlsError, trust: Trust<'_>) -> String {
    use rustls::AlertDescription as A;
    match e {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                format!("unknown CA: the server's certificate is not signed by a CA in {trust}")
            }
            CertificateError::NotValidForName => {
                "hostname mismatch: the server's certificate is not valid for this host name".into()
            }
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "hostname mismatch: the server's certificate is not valid for {} (it names {})",
                expected.to_str(),
                if presented.is_empty() {
                    "no host".into()
                } else {
                    // `DnsName("db.example")` -> `db.example`
                    presented.iter().map(|p| p.split('"').nth(1).unwrap_or(p)).collect::<Vec<_>>().join(", ")
                }
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clock)".into()
            }
            CertificateError::BadSignature => "the server's certificate has a bad signature".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the server's certificate is not for TLS servers (extended key usage)".into()
            }
            CertificateError::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => {
                "the server's certificate is a CA certificate (self-signed with CA:TRUE?): put exactly that \
                 certificate in the root file, or have the server use one signed by a CA"
                    .into()
            }
            other => format!("the server's certificate was rejected: {other:?}"),
        },
        TlsError::AlertReceived(A::CertificateRequired) => {
            "refused by the server: it requires a client certificate".into()
        }
        TlsError::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            "refused by the server: it did not accept the client certificate".into()
        }
        TlsError::AlertReceived(a) => format!("refused by the server (TLS alert {a:?})"),
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. } => {
            "the server did not answer in TLS (is this a TLS port?)".into()
        }
        TlsError::PeerIncompatible(p) => format!("no TLS version or cipher in common with the server ({p:?})"),
        other => format!("TLS error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_rustls_errors_through_io_wrappers() {
        let unknown = TlsError::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        let text = explain(&io, "ca.pem").unwrap();
        assert!(text.starts_with("unknown CA") && text.contains("ca.pem"), "{text}");
        let arc = Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("127.0.0.1").unwrap(),
                presented: vec!["DnsName(\"localhost\")".into()],
            }),
        ));
        let text = explain(&arc, "x").unwrap();
        assert!(text.starts_with("hostname mismatch") && text.contains("127.0.0.1"), "{text}");
        assert!(text.ends_with("(it names localhost)"), "{text}");
        assert!(explain(&std::io::Error::other("plain"), "x").is_none());
        // The Redis client's error keeps its io::Error as Arc<dyn Error>.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let redis_error = ::redis::RedisError::from(io);
        assert!(explain(&redis_error, "x").unwrap().starts_with("unknown CA"));
    }
}
