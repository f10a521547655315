//! dmp-ping-server: a liveness responder that answers every ping addressed
//! to it through the store, until SIGINT or SIGTERM.

use clap::Parser;
use dmp_cli::{Common, Exit};
use dmp_core::PeerId;
use dmp_core::drive::ServerOptions;
use dmp_core::proto::ping::ServerEvent;
use std::process::ExitCode;

const AFTER_HELP: &str = "\
Exit codes: 0 stopped by SIGINT or SIGTERM (its own files removed); 2 usage
error, or the store cannot be used at start-up. While running, an outage of
the store is retried with back-off and logged once; the server keeps going.
As a service: packaging/systemd/ in the source tree.";

/// Answer pings from any number of dmp-ping-client instances through a
/// shared store. Runs until SIGINT or SIGTERM, then removes its own files.
///
/// Examples:
///   dmp-ping-server bob
///   dmp-ping-server bob --store ~/Dropbox/dmp -v
///   dmp-ping-server bob --store webdav://dav.example.org/dmp --json
#[derive(Parser, Debug)]
#[command(version, about, verbatim_doc_comment, after_help = AFTER_HELP)]
struct Cli {
    /// This server's peer id.
    #[arg(value_name = "SERVER-ID")]
    server: PeerId,
    /// At exit, print one JSON object on stdout: server, clients, answered,
    /// store_outages, seconds.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    let cli: Cli = dmp_cli::parse();
    cli.common.init_logging();
    dmp_cli::runtime().block_on(run(cli)).into()
}

async fn run(cli: Cli) -> Exit {
    if let Some(exit) = cli.common.fingerprint_exit(&cli.server) {
        return exit;
    }
    let (spec, store, security) = match cli.common.setup(&cli.server).await {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    // One writer per outbox: a second server with this id would answer
    // the same clients into the same directories.
    let _lock = match dmp_cli::lock_party("dmp-ping-server", &spec.identity(), &cli.server) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    tracing::info!("{} answering pings in {spec}", cli.server);
    let mut opts = ServerOptions::for_store(store.as_ref());
    // Clients whose outboxes are read over HTTP cannot be found by listing.
    opts.known_clients = match cli.common.peer_outboxes(&cli.server) {
        Ok(o) => o.into_iter().map(|p| p.id).collect(),
        Err(e) => {
            dmp_cli::report(&e);
            return Exit::Usage;
        }
    };
    let started = std::time::Instant::now();
    let mut clients = std::collections::BTreeSet::new();
    let (mut answered, mut outages) = (0u64, 0u64);
    let mut rejects = dmp_cli::RejectLog::default();
    let res = dmp_core::drive::run_ping_server(
        store.as_ref(),
        cli.server.clone(),
        opts,
        security,
        |ev| match ev {
            ServerEvent::NewClient(c) => {
                clients.insert(c.clone());
                tracing::info!("watching for pings from {c}")
            }
            ServerEvent::Quiet(c) => tracing::debug!("{c} has not been there for a while; looking at it now and then"),
            ServerEvent::Answered { client, seq } => {
                answered += 1;
                tracing::debug!("answered {client} message {seq}")
            }
            ServerEvent::Rejected { key, reason } => rejects.note(key, reason),
            ServerEvent::StoreError(e) => {
                // Passed on once per outage.
                outages += 1;
                tracing::warn!("{e}; retrying with back-off until the store answers again")
            }
            ServerEvent::Key(n) => dmp_cli::key_notice(cli.common.quiet)(n.clone()),
            ServerEvent::KeyRefused { client, reason } => eprintln!("refusing {client}: {reason}"),
        },
        dmp_cli::shutdown_signal(),
    )
    .await;
    match res {
        Ok(()) => {
            tracing::info!("stopped; own files removed");
            if cli.json {
                let v = serde_json::json!({
                    "server": cli.server.as_str(),
                    "clients": clients.len(),
                    "answered": answered,
                    "store_outages": outages,
                    "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
                });
                dmp_cli::say(format_args!("{v}"));
            }
            Exit::Ok
        }
        Err(e) => {
            dmp_cli::report(&e.into());
            Exit::Usage
        }
    }
}
