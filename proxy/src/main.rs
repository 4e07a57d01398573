//! `hangar-proxy`: run the caching proxy, or check a config file. Flags and files become a
//! [`Config`]; [`ProxyBuilder`] does the rest.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hangar_core::FormatKind;
use hangar_proxy::config::normalize_prefix;
use hangar_proxy::logging::LogFormat;
use hangar_proxy::{Config, DisabledRepository, ProxyBuilder, RepositoryConfig};

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
    /// Log filter (tracing's RUST_LOG syntax); RUST_LOG wins if set. The access log (target
    /// `access`) is on at any level unless the filter names it (`access=off`).
    #[arg(long, default_value = "info")]
    log: String,
    /// How log lines are written: `plain` text or one `json` object per line.
    #[arg(long, value_enum, default_value = "plain")]
    log_format: Format,
    /// No access log (one line per request; `access_log = false` in the config file).
    #[arg(long)]
    no_access_log: bool,
    /// Let requests without credentials read every repository: the grant
    /// `{ role = "anonymous", repositories = ["*"], actions = ["read"] }` added to the config's.
    /// Without it, and without grants in the config, every request is refused.
    #[arg(long)]
    allow_anonymous_read: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file and exit (0 if valid).
    CheckConfig { file: PathBuf },
    /// Make a new API token: prints the token once, and the `[[auth.token]]` table (with only
    /// its hash) to add to the config.
    Token {
        /// What logs and the audit trail call it (unique).
        #[arg(long)]
        name: String,
        /// A role it carries (repeatable); grants name roles.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Who is answerable for it.
        #[arg(long, default_value = "")]
        owner: String,
        /// When it stops working (RFC 3339, e.g. 2027-06-01T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
    },
}

/// `token`: a new token and its config table.
fn new_token(name: &str, roles: &[String], owner: &str, expires: Option<&str>) -> anyhow::Result<()> {
    if let Some(e) = expires {
        hangar_proxy::config::parse_expiry(e).map_err(|m| anyhow::anyhow!("--expires: {m}"))?;
    }
    let (token, hash) = hangar_proxy::auth::new_token().context("reading randomness from the OS")?;
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    eprintln!("The token, shown this once (store it where its user keeps secrets; the config holds only its hash):");
    println!("{token}");
    eprintln!("\nAdd to the config:\n");
    eprintln!("[[auth.token]]\nname = {}\nowner = {}\nhash = \"{hash}\"\nroles = [{}]", quoted(name), quoted(owner), roles.iter().map(|r| quoted(r)).collect::<Vec<_>>().join(", "));
    if let Some(e) = expires {
        eprintln!("expires = {}", quoted(e));
    }
    Ok(())
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
    if cli.no_access_log {
        config.access_log = false;
    }
    if cli.allow_anonymous_read {
        config.auth.grants.push(hangar_proxy::config::GrantConfig { packages: Vec::new(), role: hangar_proxy::config::ANONYMOUS_ROLE.into(), repositories: vec!["*".into()], actions: vec![hangar_proxy::config::Action::Read] });
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
fn load(path: &std::path::Path) -> anyhow::Result<(Config, Vec<DisabledRepository>)> {
    let loaded = Config::load(path)?;
    for d in &loaded.disabled {
        tracing::warn!("repository '{}' disabled: {}", d.name, d.why());
    }
    Ok((loaded.config, loaded.disabled))
}

/// A URL for printing: without credentials, should one carry them.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// `check-config FILE`: the same checks as startup, short of opening the cache and binding
/// the listeners; then every repository with its format, prefix and upstream, or why it is
/// disabled.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let (config, disabled) = load(file)?;
    let builder = ProxyBuilder::new(config, &file.display().to_string())?;
    let config = builder.config();
    println!("{}: ok ({} repositories enabled)", file.display(), config.repositories.len());
    for r in &config.repositories {
        let files = r.files_upstream.as_deref().map(|f| format!(" (files: {})", shown(f))).unwrap_or_default();
        println!("  {:<12} {:<8} {:<18} -> {}{files}", r.name, r.format.to_string(), normalize_prefix(&r.prefix), shown(&r.upstream));
    }
    for d in &disabled {
        println!("  {:<12} {:<8} {:<18} disabled: {}", d.name, d.format.to_string(), d.prefix, d.why());
    }
    for warning in builder.warnings() {
        eprintln!("warning: {warning}");
    }
    if config.repositories.is_empty() {
        eprintln!("warning: no repository is enabled: the proxy would answer every request 404");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Colours only when stderr is a terminal (see `logging::init`).
    let log = hangar_proxy::logging::init(&cli.log, match cli.log_format {
        Format::Plain => LogFormat::Plain,
        Format::Json => LogFormat::Json,
    });

    let result = match &cli.command {
        Some(Command::CheckConfig { file }) => check_config(file),
        Some(Command::Token { name, roles, owner, expires }) => new_token(name, roles, owner, expires.as_deref()),
        None => (|| {
            let (config, disabled, source) = match &cli.config {
                Some(path) => {
                    let (config, disabled) = load(path)?;
                    (config, disabled, path.display().to_string())
                }
                None => (Config::default(), Vec::new(), "defaults".to_string()),
            };
            let config = apply_flags(&cli, config)?;
            let bootstrap = std::env::var(hangar_proxy::auth::BOOTSTRAP_VARIABLE).ok();
            Ok(ProxyBuilder::new(config, &source)?.disabled(disabled).bootstrap_admin(bootstrap).run()?)
        })(),
    };
    // Every queued log line out before the last word.
    drop(log);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangar-proxy: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
