//! Local HTTPS receivers: a throw-away certificate authority with a server certificate for
//! `127.0.0.1` and `localhost`, and the accept loop that serves HTTP/1.1 and HTTP/2 over it.
//!
//! The integration tests' programmable receiver and the benchmark's receiver are built on this,
//! so both exercise the processor exactly like a partner endpoint would: a real TLS handshake
//! against a CA the processor trusts only through `http.ca_bundle`. Not used by the processor.
//!
//! Every rustls user here is on the ring provider, as reqwest's `rustls-tls` is.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A response of a local receiver: a whole body ([`response`]) or a streamed one
/// ([`streamed_response`]).
pub type Response = hyper::Response<BoxBody<Bytes, Infallible>>;

/// What a local receiver does with a request.
pub type Handler = Arc<
    dyn Fn(hyper::Request<Incoming>) -> Pin<Box<dyn Future<Output = Response> + Send>>
        + Send
        + Sync,
>;

/// The longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server certificate a [`LocalTls`] issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leaf {
    /// For `127.0.0.1` and `localhost`, valid now.
    Valid,
    /// For `127.0.0.1` and `localhost`, expired (valid during 2020 only).
    Expired,
    /// Valid now, but only for this DNS name (a client connecting by any other name or by
    /// address must refuse it).
    ForName(String),
}

/// A CA and a server certificate it signed ([`Leaf`]; by default for `127.0.0.1` and `localhost`).
pub struct LocalTls {
    /// The CA certificate, PEM: what the client must trust (`http.ca_bundle`).
    pub ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
}

impl LocalTls {
    /// A fresh CA named `ca_name` and a valid server certificate it issued.
    pub fn generate(ca_name: &str) -> Result<LocalTls> {
        LocalTls::generate_leaf(ca_name, Leaf::Valid)
    }

    /// A fresh CA named `ca_name` and a server certificate of the given kind it issued.
    pub fn generate_leaf(ca_name: &str, kind: Leaf) -> Result<LocalTls> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().context("CA key")?;
        let ca_cert = ca.self_signed(&ca_key).context("CA certificate")?;
        let issuer = Issuer::new(ca, ca_key);
        let names = match &kind {
            Leaf::Valid | Leaf::Expired => vec!["127.0.0.1".to_string(), "localhost".to_string()],
            Leaf::ForName(name) => vec![name.clone()],
        };
        let mut leaf = CertificateParams::new(names.clone())?;
        leaf.distinguished_name.push(DnType::CommonName, &names[0]);
        if kind == Leaf::Expired {
            leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().context("server key")?;
        let leaf_cert = leaf
            .signed_by(&leaf_key, &issuer)
            .context("server certificate")?;
        Ok(LocalTls {
            ca_pem: ca_cert.pem(),
            leaf_der: leaf_cert.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        })
    }

    /// A TLS acceptor with the server certificate, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone()], key)
            .context("server certificate")?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Serves `listener` until the returned future is dropped (dropping it also ends every
/// connection): TLS through `tls` when given, plain HTTP otherwise; HTTP/1.1 or HTTP/2 as the
/// client chooses (by ALPN under TLS), at most `max_streams` concurrent HTTP/2 streams per
/// connection. A failed handshake or a reset ends that connection only.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_streams: u32,
    handler: Handler,
) {
    let mut connections = JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let handler = handler.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(max_streams);
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                None => {
                    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                }
            }
        });
    }
}

/// A response with this status and body.
pub fn response(status: u16, body: impl Into<Bytes>) -> Response {
    streamed_response(status, Full::new(body.into()))
}

/// A response with this status whose body is produced by `body` as the client reads it (a
/// body that drips, or one too large to hold in memory).
pub fn streamed_response<B>(status: u16, body: B) -> Response
where
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    let mut r = hyper::Response::new(body.boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status code");
    r
}
