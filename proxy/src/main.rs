//! `hangar-proxy`: run the caching proxy, or check a config file. Flags and files become a
//! [`Config`]; [`ProxyBuilder`] does the rest.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hangar_core::FormatKind;
use hangar_proxy::config::normalize_prefix;
use hangar_proxy::{Config, ProxyBuilder, RepositoryConfig};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "hangar-proxy", version, about = "Hangar's caching proxy for package registries")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML). Without it, built-in defaults plus the flags below.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Address to serve clients on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin: Option<String>,
    /// Root of the disk cache.
    #[arg(long)]
    cache_dir: Option<String>,
    /// Mount a generic repository: PREFIX=URL (repeatable), e.g. /=http://127.0.0.1:8000
    #[arg(long = "upstream", value_name = "PREFIX=URL")]
    upstreams: Vec<String>,
    /// Worker threads.
    #[arg(long)]
    threads: Option<usize>,
    /// Log filter (tracing's RUST_LOG syntax); RUST_LOG wins if set.
    #[arg(long, default_value = "info")]
    log: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file and exit (0 if valid).
    CheckConfig { file: PathBuf },
}

fn repo_name_for(prefix: &str) -> String {
    let name: String = prefix
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
        .collect();
    if name.is_empty() { "root".into() } else { name }
}

/// Apply command-line overrides on top of the file's (or default) values.
fn apply_flags(cli: &Cli, mut config: Config) -> anyhow::Result<Config> {
    if let Some(v) = &cli.listen {
        config.listen = v.clone();
    }
    if let Some(v) = &cli.admin {
        config.admin_listen = v.clone();
    }
    if let Some(v) = &cli.cache_dir {
        config.cache.dir = v.clone();
    }
    if let Some(v) = cli.threads {
        config.threads = v;
    }
    for spec in &cli.upstreams {
        let (prefix, url) = spec
            .split_once('=')
            .with_context(|| format!("--upstream {spec}: expected PREFIX=URL"))?;
        let norm = normalize_prefix(prefix);
        config.repositories.retain(|r| normalize_prefix(&r.prefix) != norm);
        config.repositories.push(RepositoryConfig::new(&repo_name_for(prefix), prefix, FormatKind::default(), url));
    }
    config.validate("command line")?;
    Ok(config)
}

/// Read `path`, warning of each repository its environment leaves disabled.
fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let loaded = Config::load(path)?;
    for d in &loaded.disabled {
        tracing::warn!(
            "repository '{}' disabled: its upstream uses ${{{}}}, which is not set",
            d.name,
            d.variable
        );
    }
    Ok(loaded.config)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    // Colours only for a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();

    let result = match &cli.command {
        // The same checks as startup, short of opening the cache and binding the listeners.
        Some(Command::CheckConfig { file }) => load(file).and_then(|c| Ok(ProxyBuilder::new(c, &file.display().to_string())?)).map(|b| {
            println!("{}: ok ({} repositories enabled)", file.display(), b.config().repositories.len());
        }),
        None => (|| {
            let (config, source) = match &cli.config {
                Some(path) => (load(path)?, path.display().to_string()),
                None => (Config::default(), "defaults".to_string()),
            };
            let config = apply_flags(&cli, config)?;
            Ok(ProxyBuilder::new(config, &source)?.run()?)
        })(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangar-proxy: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
