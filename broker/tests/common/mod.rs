//! Shared helpers: a broker on port 0 and a raw MQTT client built on the
//! crate's own codec, so tests can send exact (and malformed) bytes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use runnel_broker::codec::{
    self, ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Publish, QoS, Subscribe,
};
use runnel_broker::{Broker, BrokerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous upper bound for "should happen"; tests never assert durations.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    }
}

pub async fn start(config: BrokerConfig) -> (Broker, SocketAddr) {
    let broker = Broker::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = broker.serve_tcp(listener).unwrap();
    (broker, addr)
}

pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

pub fn connect_packet(client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol_level: 4,
        clean_session: clean,
        keep_alive_secs: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    }
}

pub fn will(topic: &str, payload: &'static [u8], qos: QoS) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
    }
}

impl RawClient {
    pub async fn open(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Opens, sends CONNECT, expects CONNACK 0 and returns (client, session present).
    pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, bool) {
        let mut client = RawClient::open(addr).await;
        client.send(&Packet::Connect(connect)).await;
        match client.recv().await {
            Some(Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Accepted,
                session_present,
            })) => (client, session_present),
            other => panic!("expected CONNACK 0, got {other:?}"),
        }
    }

    pub async fn connect(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_with(addr, connect_packet(client_id, true))
            .await
            .0
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, &mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The broker may already have closed: errors are fine here.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Next packet, `None` on EOF or reset. Panics after `WAIT`.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("no packet within WAIT")
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = codec::decode(&mut self.buf, 1 << 24).unwrap() {
                return Some(packet);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// True if the broker closes the connection (EOF or reset) within `WAIT`,
    /// ignoring packets received meanwhile.
    pub async fn closed_by_broker(&mut self) -> bool {
        tokio::time::timeout(WAIT, async { while self.recv_inner().await.is_some() {} })
            .await
            .is_ok()
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Packet {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), qos)],
        }))
        .await;
        self.recv().await.expect("suback")
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(id),
            payload: Bytes::copy_from_slice(payload),
        }))
        .await;
    }

    /// Next PUBLISH, skipping other packets.
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(publish)) => return publish,
                Some(_) => continue,
                None => panic!("connection closed while waiting for a publish"),
            }
        }
    }

    /// Sends PINGREQ and collects everything up to PINGRESP: a barrier that
    /// proves the broker processed what was sent before.
    pub async fn sync(&mut self) -> Vec<Packet> {
        self.send(&Packet::PingReq).await;
        let mut seen = Vec::new();
        loop {
            match self.recv().await {
                Some(Packet::PingResp) => return seen,
                Some(packet) => seen.push(packet),
                None => panic!("closed during sync"),
            }
        }
    }
}
