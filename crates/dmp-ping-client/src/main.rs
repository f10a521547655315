//! dmp-ping-client: ping(8) over a store. Sends requests into the client's
//! outbox and times the server's replies.

use clap::Parser;
use dmp_cli::{Common, Exit};
use dmp_core::PeerId;
use dmp_core::proto::ping::{PingConfig, PingEvent};
use std::process::ExitCode;
use std::time::Duration;

const AFTER_HELP: &str = "\
Exit codes: 0 at least one reply came (with -w and -c: COUNT replies);
1 none did; 2 usage, store or key error (the server's key changed, for one).
As a monitoring check (Nagios/Icinga: 0 OK, 1 CRITICAL, 2 UNKNOWN):
  dmp-ping-client bob monitor -c 1 -W 30 -q";

/// Ping a dmp-ping-server through a shared store, like ping(8).
///
/// Examples:
///   dmp-ping-client bob alice -c 3
///   dmp-ping-client bob alice --store ~/Dropbox/dmp -i 0.2 -W 30
///   dmp-ping-client bob alice -c 1 -W 20 -q --json
///   dmp-ping-client bob alice -c 1 -w 60 -W 20 -q   (up to 60 s for one reply)
#[derive(Parser, Debug)]
#[command(version, about, verbatim_doc_comment, after_help = AFTER_HELP)]
struct Cli {
    /// The server's peer id.
    #[arg(value_name = "SERVER-ID")]
    server: PeerId,
    /// This client's peer id.
    #[arg(value_name = "CLIENT-ID")]
    client: PeerId,
    /// Stop after COUNT requests (default: until interrupted).
    #[arg(short = 'c', long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Seconds between requests (fractions allowed).
    #[arg(short = 'i', long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    interval: Duration,
    /// Seconds to wait for each reply (synced folders can be slow).
    #[arg(short = 'W', long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    wait: Duration,
    /// Stop after SECONDS in all, whatever was sent or received, as
    /// ping(8)'s -w. With -c, requests go on until COUNT replies came or
    /// the time is up, and fewer than COUNT replies is exit code 1.
    #[arg(short = 'w', long, value_name = "SECONDS", value_parser = parse_seconds)]
    deadline: Option<Duration>,
    /// Print one JSON object at the end instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.001..=86_400.0).contains(&v) {
        return Err(format!("{s:?}: must be between 0.001 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn fmt_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

fn fmt_pct(p: f64) -> String {
    if (p - p.round()).abs() < 1e-9 { format!("{p:.0}") } else { format!("{p:.1}") }
}

fn main() -> ExitCode {
    let cli: Cli = dmp_cli::parse();
    cli.common.init_logging();
    dmp_cli::runtime().block_on(run(cli)).into()
}

async fn run(cli: Cli) -> Exit {
    if let Err(exit) = dmp_cli::check_distinct(("SERVER-ID", &cli.server), ("CLIENT-ID", &cli.client)) {
        return exit;
    }
    if let Some(exit) = cli.common.fingerprint_exit(&cli.client) {
        return exit;
    }
    let (spec, store, security) = match cli.common.setup(&cli.client).await {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    // One writer per outbox: a second client with the same ids would take
    // this one's replies.
    let _lock = match dmp_cli::lock_link("dmp-ping-client", &spec.identity(), &cli.client, &cli.server) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let text = !cli.json;
    let quiet = cli.common.quiet;
    // Once stdout is gone (`| head -1`), the run stops as on Ctrl-C: the
    // client removes its files from the store and exits without printing.
    let stdout_gone = std::cell::Cell::new(false);
    let stdout_closed = tokio::sync::Notify::new();
    let say = |line: std::fmt::Arguments<'_>| {
        if !stdout_gone.get() && !dmp_cli::say(line) {
            stdout_gone.set(true);
            stdout_closed.notify_one();
        }
    };
    if text {
        say(format_args!("PING {} from {} via {}", cli.server, cli.client, spec));
    }
    let cfg = PingConfig {
        count: cli.count,
        interval: cli.interval,
        wait: cli.wait,
        deadline: cli.deadline,
        link: dmp_core::drive::ping_link_config_for(store.as_ref()),
    };
    let server = cli.server.clone();
    let wait = cli.wait;
    let mut rejects = dmp_cli::RejectLog::default();
    let summary = dmp_core::drive::run_ping_client(
        store.as_ref(),
        cli.client.clone(),
        cli.server.clone(),
        cfg,
        security,
        |ev| match ev {
            PingEvent::Reply { seq, rtt } if text && !quiet => {
                say(format_args!("reply from {server}: seq={seq} time={} ms", fmt_ms(*rtt)));
            }
            PingEvent::Lost { seq } if text && !quiet => {
                say(format_args!("seq={seq}: no answer from {server} within {} s", wait.as_secs_f64()));
            }
            PingEvent::Rejected { key, reason } => rejects.note(key, reason),
            PingEvent::StoreError(e) => tracing::warn!("{e} (retrying)"),
            PingEvent::Key(n) => dmp_cli::key_notice(quiet)(n.clone()),
            _ => {}
        },
        async {
            tokio::select! {
                () = dmp_cli::shutdown_signal() => {}
                () = stdout_closed.notified() => {}
            }
        },
    )
    .await;
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            // A store that refuses my writes for good (no request was made),
            // or a key refused (the server's changed: maybe an impostor;
            // pinned keys unreadable): not "no reply".
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    };
    let st = summary.stats();
    // As ping(8): with a deadline and a count, fewer replies than the count
    // is a failure; otherwise any reply is success.
    let wanted = match (cli.deadline, cli.count) {
        (Some(_), Some(c)) => c,
        _ => 1,
    };
    let done = if summary.received >= wanted { Exit::Ok } else { Exit::Failed };
    if stdout_gone.get() {
        return done;
    }
    if cli.json {
        let v = serde_json::json!({
            "server": cli.server.as_str(),
            "client": cli.client.as_str(),
            "sent": summary.sent,
            "received": summary.received,
            "loss_pct": summary.loss_pct(),
            // No reply, no round trip: null, not zeros.
            "rtt_ms": (summary.received > 0).then(|| serde_json::json!(
                { "min": st.min, "avg": st.avg, "max": st.max, "mdev": st.mdev, "p50": st.p50, "p99": st.p99 }
            )),
        });
        say(format_args!("{v}"));
    } else {
        say(format_args!(""));
        say(format_args!("--- {} ping statistics ---", cli.server));
        // Requests that never reached the store, as ping(8)'s "+N errors".
        let unwritten =
            if summary.unwritten > 0 { format!(", +{} not written", summary.unwritten) } else { String::new() };
        say(format_args!(
            "{} sent, {} received{unwritten}, {}% loss",
            summary.sent,
            summary.received,
            fmt_pct(summary.loss_pct())
        ));
        if summary.received > 0 {
            say(format_args!("rtt min/avg/max/mdev = {:.3}/{:.3}/{:.3}/{:.3} ms", st.min, st.avg, st.max, st.mdev));
        }
    }
    done
}
