//! MQTT over TLS (rustls) and over WebSocket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use common::{WAIT, config, connect_packet};
use futures::{SinkExt, StreamExt};
use runnel_broker::Broker;
use runnel_broker::codec::{self, ConnAck, ConnectReturnCode, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::ServerName};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

/// Test-only certificates, see `tests/data/README.md`.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn connect_bytes(client_id: &str) -> BytesMut {
    let mut out = BytesMut::new();
    codec::encode(&Packet::Connect(connect_packet(client_id, true)), &mut out);
    out
}

const ACCEPTED: Packet = Packet::ConnAck(ConnAck {
    session_present: false,
    code: ConnectReturnCode::Accepted,
});

#[tokio::test]
async fn mqtt_over_tls_connects_and_receives() {
    use rustls::pki_types::pem::PemObject;
    let broker = Broker::new(config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = broker
        .serve_tls(listener, &fixture("cert.pem"), &fixture("key.pem"))
        .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(server_name, tcp).await.unwrap();

    tls.write_all(&connect_bytes("tls-client")).await.unwrap();
    let mut subscribe = BytesMut::new();
    codec::encode(
        &Packet::Subscribe(codec::Subscribe {
            packet_id: 1,
            filters: vec![("secure".into(), QoS::AtMostOnce)],
        }),
        &mut subscribe,
    );
    tls.write_all(&subscribe).await.unwrap();
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    tokio::time::timeout(WAIT, async {
        while packets.len() < 2 {
            tls.read_buf(&mut buf).await.unwrap();
            while let Some(packet) = codec::decode(&mut buf, 1 << 20).unwrap() {
                packets.push(packet);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(packets[0], ACCEPTED);
    assert!(matches!(packets[1], Packet::SubAck(_)));
    broker
        .publish(runnel_broker::Publish::new("secure", "hello"))
        .await
        .unwrap();
    let publish = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Packet::Publish(p)) = codec::decode(&mut buf, 1 << 20).unwrap() {
                return p;
            }
            tls.read_buf(&mut buf).await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(&publish.payload[..], b"hello");
}

#[tokio::test]
async fn mqtt_over_websocket_with_mqtt_subprotocol() {
    let broker = Broker::new(config()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = broker.serve_websocket(listener).unwrap();

    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    // [MQTT-6.0.0-3] the server selects the "mqtt" subprotocol.
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );

    ws.send(Message::Binary(connect_bytes("ws-client").freeze()))
        .await
        .unwrap();
    let mut received = BytesMut::new();
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(data) => {
                    received.extend_from_slice(&data);
                    if let Some(packet) = codec::decode(&mut received, 1 << 20).unwrap() {
                        return packet;
                    }
                }
                _ => continue,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(first, ACCEPTED);

    ws.send(Message::Binary(bytes::Bytes::from_static(&[0xc0, 0])))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(pong, Message::Binary(bytes::Bytes::from_static(&[0xd0, 0])));

    // [MQTT-6.0.0-1] a text frame closes the connection.
    ws.send(Message::Text("not mqtt".into())).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap();
    assert!(closed);
}
