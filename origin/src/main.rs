//! `hangar-origin --config origin.toml [--listen ADDR] [--dir DIR]`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hangar_origin::config::{OriginConfig, StoreConfig};

#[derive(Parser)]
#[command(name = "hangar-origin", about = "The durable tier behind Hangar's proxies")]
struct Cli {
    /// TOML configuration (listen, spool_dir, [store], [repositories.<name>]).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Override `listen` (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Store in this local directory instead of what the config says.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
            toml::from_str::<OriginConfig>(&text).with_context(|| format!("{}: invalid configuration", path.display()))?
        }
        None => OriginConfig::default(),
    };
    if let Some(l) = cli.listen {
        config.listen = l;
    }
    // The secret is best kept out of the file: the environment may carry it instead.
    if config.fleet_secret.is_none() {
        config.fleet_secret = std::env::var("HANGAR_FLEET_SECRET").ok().filter(|s| !s.is_empty()).map(hangar_origin::config::FleetSecret);
    }
    if config.fleet_secret.as_ref().is_some_and(|s| s.0.len() < 16) {
        anyhow::bail!("fleet_secret: must be at least 16 characters, as the proxies' fleet.secret");
    }
    if let Some(d) = cli.dir {
        config.store = StoreConfig::Local { dir: d };
    }
    hangar_origin::serve(config).await
}
