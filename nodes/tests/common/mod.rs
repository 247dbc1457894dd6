//! Helpers for the MQTT tests of `runnel-nodes`: a private Mosquitto per
//! test (optionally with TLS and a password file), a test sink that keeps
//! messages unfinished, and an engine with it registered. Used by `mqtt.rs` and `mqtt5.rs`; [`http`] holds what the
//! HTTP tests add.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use runnel_engine::schemars::{self, JsonSchema};
use runnel_engine::testing::Collect;
use runnel_engine::{
    BuildCtx, BuildError, DeployReport, Engine, EngineSettings, EngineShared, Msg, NodeError,
    NodeSpec, NodeType, Out, Registry, SyncNode,
};
use serde::Deserialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

pub mod http;

/// How long a test waits for anything (a hang guard, never a timing assert).
pub const GUARD: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// What the test broker requires.
#[derive(Default, Clone)]
pub struct BrokerOpts {
    /// A user and password (anonymous clients are refused).
    pub password: Option<(&'static str, &'static str)>,
    /// TLS with a CA generated now (openssl), requiring client
    /// certificates; the files are in [`Mosquitto::dir`].
    pub tls: bool,
    /// `persistence true`: sessions and queued messages survive
    /// [`Mosquitto::stop`] and [`Mosquitto::spawn`].
    pub persistence: bool,
}

/// A Mosquitto on a free port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(opts: BrokerOpts) -> Mosquitto {
        assert!(
            Command::new("mosquitto").arg("-h").output().is_ok(),
            "mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // `user root`: started as root, Mosquitto would switch to the
        // mosquitto user and could not write its log into our private
        // temporary directory (ignored when not root).
        let mut conf = format!(
            "user root\nlistener {port} 127.0.0.1\nmax_queued_messages 0\nlog_dest file {}\nlog_type all\n",
            dir.path().join("mosquitto.log").display()
        );
        if opts.persistence {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        if opts.tls {
            make_test_pki(dir.path());
            let d = dir.path().display();
            conf.push_str(&format!(
                "cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\nrequire_certificate true\n"
            ));
        }
        match opts.password {
            Some((user, pass)) => {
                let file = dir.path().join("passwd");
                let status = Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, pass])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
                conf.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.spawn();
        broker
    }

    /// Starts the broker (again) and waits until it listens.
    pub fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + GUARD;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Waits (within the hang guard) until the broker's log has `line` at
    /// least `count` times: what the broker has received, without sleeping
    /// on a guess.
    pub async fn wait_logged(&self, line: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + GUARD;
        while self.log().matches(line).count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{line:?} never logged {count} times:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Generates a CA, a server certificate for 127.0.0.1 and a client
/// certificate in `dir` (ca.crt, server.{crt,key}, client.{crt,key}).
fn make_test_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=runnel test CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, crt, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.crt"),
            format!("{who}.ext"),
        );
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN=runnel {who}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

// ------------------------------------------------------------- hold sink

/// A sink (`t-hold`) that hands messages to a test *with* their tracker:
/// they stay unfinished (unacknowledged) until the test drops them.
/// (`test-collect` finishes them at the sink.)
pub struct Hold;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldConfig {
    channel: String,
}

type HoldChannels = std::sync::Mutex<HashMap<String, UnboundedSender<Msg>>>;

fn hold_channels() -> &'static HoldChannels {
    static CHANNELS: std::sync::OnceLock<HoldChannels> = std::sync::OnceLock::new();
    CHANNELS.get_or_init(Default::default)
}

/// The messages a `t-hold` node with `channel` receives.
pub fn hold(channel: &str) -> UnboundedReceiver<Msg> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    hold_channels()
        .lock()
        .unwrap()
        .insert(channel.to_string(), tx);
    rx
}

struct HoldNode(Option<UnboundedSender<Msg>>);

impl SyncNode for HoldNode {
    fn on_msg(&mut self, msg: Msg, _: &mut Out) -> Result<(), NodeError> {
        if let Some(tx) = &self.0 {
            let _ = tx.send(msg);
        }
        Ok(())
    }
}

impl NodeType for Hold {
    const TYPE: &'static str = "t-hold";
    const SUMMARY: &'static str = "test sink keeping messages unfinished";
    type Config = HoldConfig;
    fn build(config: HoldConfig, _: &BuildCtx<'_>) -> Result<NodeSpec, BuildError> {
        let tx = hold_channels()
            .lock()
            .unwrap()
            .get(&config.channel)
            .cloned();
        Ok(NodeSpec::sync(0, HoldNode(tx)))
    }
}

// ------------------------------------------------------------------ engine

/// An engine with every runnel node type plus `test-collect` and `t-hold`,
/// draining for at most 5 s.
pub fn engine() -> Arc<Engine> {
    let mut registry = Registry::new();
    runnel_nodes::register_all(&mut registry);
    registry.register::<Collect>().register::<Hold>();
    let settings = EngineSettings {
        drain_timeout: Duration::from_secs(5),
        ..EngineSettings::default()
    };
    Engine::new(registry.into_shared(), EngineShared::new(settings))
}

/// Loads `yaml` as flow `name` with `env` for its `${VAR}`s and deploys it.
pub async fn deploy(engine: &Engine, name: &str, yaml: &str, env: &[(&str, &str)]) -> DeployReport {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let flow = engine
        .loader()
        .load_with_env(Path::new(&format!("{name}.yaml")), yaml, &env)
        .unwrap_or_else(|d| panic!("flow should load:\n{d}"));
    engine.deploy(flow).await
}

/// The next item of `rx`, within the hang guard.
pub async fn next<T>(rx: &mut UnboundedReceiver<T>) -> T {
    tokio::time::timeout(GUARD, rx.recv())
        .await
        .expect("a message within the hang guard")
        .expect("channel open")
}

/// Receives numbered messages from `seen` into `got` (by [`n_of`]) until
/// every number in `wanted` has come, failing after the hang guard with
/// what is missing and the broker's log.
pub async fn receive_all(
    seen: &mut UnboundedReceiver<Msg>,
    got: &mut BTreeSet<i64>,
    wanted: &BTreeSet<i64>,
    broker: &Mosquitto,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !wanted.is_subset(got) {
        let missing: Vec<_> = wanted.difference(got).take(10).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages never arrived: {missing:?}; got {got:?}\n{}",
            broker.log()
        );
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), seen.recv()).await {
            got.insert(n_of(&msg));
        }
    }
}

/// `payload.n` of a numbered test message, or -1.
pub fn n_of(msg: &Msg) -> i64 {
    msg.payload()
        .as_object()
        .and_then(|o| o.get("n"))
        .and_then(runnel_engine::Value::as_i64)
        .unwrap_or(-1)
}
