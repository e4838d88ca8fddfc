//! `twill-dnsd`: twill's node-local cluster DNS server.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::{info, warn};
use twill_dnsd::{
    config::{Config, Overrides},
    forward::Forwarder,
    fqdn::{self, FqdnRules, Learner},
    intercept, metrics,
    records::Recorder,
    server::{Listeners, Responder, TcpLimits},
    source,
};

#[derive(Parser)]
#[command(
    name = "twill-dnsd",
    version,
    about = "twill's node-local cluster DNS server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS: the cluster zone from etcd, other names forwarded upstream.
    Run {
        /// Configuration file (TOML). Without it, only the flags and the defaults apply.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Check a configuration and print the result, without running.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
}

/// How often expired learned FQDN addresses are removed.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("twill-dnsd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, overrides } => {
            let config = load_config(config, &overrides)?;
            init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
        Command::CheckConfig { config, overrides } => {
            let config = load_config(config, &overrides)?;
            println!("{config:#?}");
            Ok(())
        }
    }
}

fn load_config(path: Option<PathBuf>, overrides: &Overrides) -> anyhow::Result<Config> {
    let (name, text) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        }
        None => ("(flags)".to_owned(), String::new()),
    };
    let read = |path: &std::path::Path| std::fs::read_to_string(path).map_err(|e| e.to_string());
    Ok(Config::from_toml(&name, &text, overrides, &read)?)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Bind first, so a wrong address fails at once rather than after etcd answers.
    let listeners = Listeners::bind(&config.listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some((
            addr,
            twill_metrics_http::bind(addr, "metrics.listen").await?,
        )),
        None => None,
    };
    match &config.upstreams_from {
        Some(path) if config.forward.upstreams.is_empty() => warn!(
            "{} gives no upstream besides this server: names outside {} get SERVFAIL",
            path.display(),
            config.zone.zone
        ),
        _ if config.forward.upstreams.is_empty() => {
            warn!(
                "no upstreams: names outside {} get SERVFAIL",
                config.zone.zone
            )
        }
        _ => info!(
            "forwarding names outside {} to {:?}",
            config.zone.zone, config.forward.upstreams
        ),
    }
    let (zone_tx, zone_rx) = tokio::sync::watch::channel(None);
    let (rules_tx, rules_rx) = tokio::sync::watch::channel(Arc::new(FqdnRules::default()));
    let forwarder = Arc::new(Forwarder::new(config.forward.clone()));
    let learner = Arc::new(Learner::new(config.fqdn.clone()));
    let recorder = match &config.records {
        Some(socket) => {
            info!("query records go to twilld at {}", socket.display());
            Some(Recorder::start(socket.clone()).context("starting the query recorder")?)
        }
        None => None,
    };
    let page = Arc::new(metrics::Page {
        records: recorder.as_ref().map(|r| Arc::clone(r.counts())),
        stats: Arc::clone(forwarder.stats()),
        forwarder: Arc::clone(&forwarder),
        learner: Arc::clone(&learner),
        zone: zone_rx.clone(),
    });
    let serving_metrics = metrics_listener.map(|(addr, listener)| {
        info!("serving /metrics on {addr}");
        tokio::spawn(twill_metrics_http::serve(listener, page, "twill-dnsd"))
    });
    let mut responder =
        Responder::new(zone_rx, forwarder).with_fqdn(rules_rx.clone(), Arc::clone(&learner));
    if let Some(recorder) = recorder {
        responder = responder.with_records(recorder);
    }
    let responder = Arc::new(responder);
    let sweeping = tokio::spawn(fqdn::keep_swept(learner, rules_rx, SWEEP_EVERY));
    let limits = TcpLimits {
        idle_timeout: config.tcp_idle_timeout,
        max_connections: config.tcp_max_connections,
    };
    let follow_config = config.clone();
    let following =
        tokio::spawn(async move { source::follow(&follow_config, zone_tx, rules_tx).await });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    // Pods' queries are taken over only once the sockets are bound, and only while the
    // runtime that serves them runs this task too.
    let intercepting = config
        .intercept
        .clone()
        .map(|c| tokio::spawn(intercept::keep_entries(c)));
    let result = tokio::select! {
        served = listeners.serve(responder, limits) => served,
        _ = tokio::signal::ctrl_c() => { info!("interrupted; stopping"); Ok(()) }
        _ = terminate.recv() => { info!("terminated; stopping"); Ok(()) }
    };
    if let (Some(task), Some(c)) = (intercepting, &config.intercept) {
        task.abort();
        // Finished (not mid-write) before the entries go, so none is written back.
        let _ = task.await;
        intercept::withdraw(c);
    }
    following.abort();
    sweeping.abort();
    if let Some(task) = serving_metrics {
        task.abort();
    }
    result
}
