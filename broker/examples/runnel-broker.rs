//! Runs the embedded broker standalone, for benchmarks and manual tests.
//!
//! `cargo run --release -p runnel-broker --example runnel-broker -- [ADDR] [CONFIG.json]`
//! ADDR defaults to 127.0.0.1:1883; CONFIG is a JSON `BrokerConfig`.
//! Stops on Ctrl-C or SIGTERM with a graceful shutdown.

use anyhow::Context;
use runnel_broker::{Broker, BrokerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:1883".to_owned());
    let mut config = match args.next() {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            serde_json::from_str::<BrokerConfig>(&text)
                .with_context(|| format!("parsing {path}"))?
        }
        None => BrokerConfig::default(),
    };
    config.listen = addr
        .parse()
        .with_context(|| format!("bad listen address {addr}"))?;
    let broker = Broker::start(config).await?;
    eprintln!("runnel-broker listening on {:?}", broker.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    broker.shutdown().await?;
    Ok(())
}
