//! `http-request` over TLS against a real HTTPS server on loopback (axum
//! through tokio-rustls), with a CA and server certificate made at test time
//! (rcgen): the node trusts the server through its `ca` file, refuses it
//! without, and the refusal reaches `catch` as a clear error while the flow
//! keeps answering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::http::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use runnel_engine::testing::collect;
use serde_json::json;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

/// A CA (its certificate in PEM) and a server certificate it signed for
/// 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let ca = ca("runnel test CA");
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "runnel test server");
    let cert = params.signed_by(&key, &ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca.der().clone()],
            pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
    }
}

/// Accepts TCP connections and completes the TLS handshake for axum; a
/// failed handshake (a client refusing the certificate) is skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A hang guard: a client stuck mid-handshake must not block the
            // next one for long.
            match tokio::time::timeout(GUARD, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                _ => continue,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS server answering `GET /hello/{name}` with JSON.
async fn https_server(config: rustls::ServerConfig) -> SocketAddr {
    let app = axum::Router::new().route(
        "/hello/{name}",
        axum::routing::get(
            |axum::extract::Path(name): axum::extract::Path<String>| async move {
                axum::Json(json!({"hello": name, "tls": true}))
            },
        ),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_trusts_its_ca_file_and_reports_untrusted_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, ca("another CA").pem()).unwrap();
    let upstream = https_server(pki.server).await;

    let engine = engine(&dir.path().join("data"));
    let addr = flow_server().await;
    let mut errors = collect("tls-errors");
    // Each http-in calls the HTTPS server through its own http-request;
    // failures go through catch to a 502 answer naming the error.
    let yaml = format!(
        r#"
nodes:
  - {{id: in-trusted, type: http-in, path: /tls/trusted, wires: [[trusted]]}}
  - id: trusted
    type: http-request
    url: "https://{upstream}/hello/{{{{payload.name}}}}"
    ca: "${{TLS_TEST_CA}}"
    wires: [[respond]]
  - {{id: in-platform, type: http-in, path: /tls/platform, wires: [[platform]]}}
  - id: platform
    type: http-request
    url: "https://{upstream}/hello/x"
    retries: 3
    retry_backoff: 10ms
    wires: [[respond]]
  - {{id: in-other, type: http-in, path: /tls/other-ca, wires: [[other]]}}
  - id: other
    type: http-request
    url: "https://{upstream}/hello/x"
    ca: "${{TLS_TEST_OTHER_CA}}"
    wires: [[respond]]
  - {{id: in-missing, type: http-in, path: /tls/missing-ca, wires: [[missing]]}}
  - id: missing
    type: http-request
    url: "https://{upstream}/hello/x"
    ca: "${{TLS_TEST_OTHER_CA}}.missing"
    wires: [[respond]]
  - {{id: respond, type: http-response}}
  - {{id: failed, type: catch, wires: [[bad-gateway, sink]]}}
  - id: bad-gateway
    type: change
    rules: [{{set: statusCode, to: 502}}, {{set: payload, from: error.message}}]
    wires: [[respond]]
  - {{id: sink, type: test-collect, channel: tls-errors}}
"#
    );
    let env: HashMap<String, String> = HashMap::from([
        (
            "TLS_TEST_CA".to_string(),
            ca_file.to_string_lossy().into_owned(),
        ),
        (
            "TLS_TEST_OTHER_CA".to_string(),
            other_ca_file.to_string_lossy().into_owned(),
        ),
    ]);
    let flow = engine
        .loader()
        .load_with_env(Path::new("tls.yaml"), &yaml, &env)
        .unwrap_or_else(|e| panic!("flow does not load: {e:?}"));
    engine.deploy(flow).await;
    wait_for_routes(&[
        "GET /tls/trusted",
        "GET /tls/platform",
        "GET /tls/other-ca",
        "GET /tls/missing-ca",
    ])
    .await;
    let http = client();
    let get = |path: &str| {
        let request = http.get(format!("http://{addr}{path}")).send();
        async move { json_of(request.await.unwrap()).await }
    };

    // Trusted through the CA file: the answer comes back over TLS.
    let (status, body) = get("/tls/trusted?name=ada").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"hello": "ada", "tls": true}));

    // Only the platform's roots: the certificate is refused, once (a
    // certificate error is not retried), and the error says why.
    let (status, body) = get("/tls/platform").await;
    assert_eq!(status, 502, "{body}");
    let error = next(&mut errors).await.to_json();
    assert_eq!(error["error"]["source"]["id"], "platform");
    let text = error["error"]["message"].as_str().unwrap().to_string();
    assert!(
        text.contains("certificate is not trusted") && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(text.contains("after 1 attempt(s)"), "{text}");
    assert!(text.contains("set `ca`"), "{text}");

    // A CA file naming another CA: refused the same way.
    let (status, _) = get("/tls/other-ca").await;
    assert_eq!(status, 502);
    let error = next(&mut errors).await.to_json();
    assert_eq!(error["error"]["source"]["id"], "other");
    let text = error["error"]["message"].as_str().unwrap().to_string();
    assert!(text.contains("certificate is not trusted"), "{text}");

    // A CA file that does not exist: every message fails with the reason.
    let (status, body) = get("/tls/missing-ca").await;
    assert_eq!(status, 502);
    assert!(
        body.as_str().unwrap().contains("cannot read the CA file"),
        "{body}"
    );
    let error = next(&mut errors).await.to_json();
    assert_eq!(error["error"]["source"]["id"], "missing");

    // The flow keeps running: the trusted path still answers.
    let (status, body) = get("/tls/trusted?name=bob").await;
    assert_eq!((status, &body["hello"]), (200, &json!("bob")), "{body}");
    engine.shutdown().await;
}
