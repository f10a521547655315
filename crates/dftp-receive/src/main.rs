//! dftp-receive: receive one file through the store into a directory,
//! verifying every chunk and the whole file.

use clap::Parser;
use dmp_cli::{Common, Exit};
use dmp_core::PeerId;
use dmp_core::drive::dftp::{Progress, RecvOptions, TransferError, receive_file};
use dmp_core::proto::dftp::RecvConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Receive a file from a dftp-send through a shared store into DIR. Every
/// chunk and the whole file are checked with SHA-256; the file appears
/// under its name only once complete. Run the same command again to resume
/// after an interruption.
///
/// Examples:
///   dftp-receive alice bob ~/Downloads
///   dftp-receive alice bob . --overwrite --store ~/Dropbox/dmp --json
#[derive(Parser, Debug)]
#[command(version, about, verbatim_doc_comment, after_help = dmp_cli::TRANSFER_EXIT_CODES)]
struct Cli {
    /// The sender's peer id.
    #[arg(value_name = "SENDER-ID")]
    sender: PeerId,
    /// This receiver's peer id.
    #[arg(value_name = "RECEIVER-ID")]
    receiver: PeerId,
    /// Directory to save the file in.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Replace an existing file of the same name.
    #[arg(long)]
    overwrite: bool,
    /// Give up when the sender shows no progress for this many seconds (default: wait).
    #[arg(long, value_name = "SECONDS", value_parser = dmp_cli::parse_seconds)]
    timeout: Option<Duration>,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    let cli: Cli = dmp_cli::parse();
    cli.common.init_logging();
    dmp_cli::transfer_runtime().block_on(run(cli)).into()
}

async fn run(cli: Cli) -> Exit {
    if let Err(exit) = dmp_cli::check_distinct(("SENDER-ID", &cli.sender), ("RECEIVER-ID", &cli.receiver)) {
        return exit;
    }
    if let Some(exit) = cli.common.fingerprint_exit(&cli.receiver) {
        return exit;
    }
    match std::fs::metadata(&cli.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            eprintln!("error: {} is not a directory", cli.dir.display());
            return Exit::Usage;
        }
        Err(e) => {
            eprintln!("error: {}: {e}", cli.dir.display());
            return Exit::Usage;
        }
    }
    let (spec, store, security) = match cli.common.setup(&cli.receiver).await {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let canonical = std::fs::canonicalize(&cli.dir).unwrap_or_else(|_| cli.dir.clone());
    let (store_id, path) = (spec.identity(), canonical.to_string_lossy());
    let _lock = match dmp_cli::lock_link("dftp-receive", &store_id, &cli.sender, &cli.receiver) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let state_file =
        cli.common.state_file("receive", &[store_id.as_str(), cli.sender.as_str(), cli.receiver.as_str(), &path]);
    let opts = RecvOptions {
        dir: canonical.clone(),
        overwrite: cli.overwrite,
        cfg: RecvConfig { link: dmp_core::drive::link_config_for(store.as_ref()), ..RecvConfig::default() },
        state_file,
        timeout: cli.timeout,
        linger: Duration::from_secs(10),
        security,
    };
    if !cli.json && !cli.common.quiet {
        eprintln!("waiting for a file from {} via {spec}", cli.sender);
    }
    let pb = dmp_cli::progress_bar(cli.common.quiet, "receiving");
    let mut announced = false;
    let quiet = cli.json || cli.common.quiet;
    let res = receive_file(
        store.as_ref(),
        cli.receiver.clone(),
        cli.sender.clone(),
        opts,
        |p: Progress, offer| {
            if let (false, Some(o)) = (announced, offer) {
                announced = true;
                if !quiet {
                    // {:?} escapes anything a hostile name might carry.
                    eprintln!("offered {:?} ({} bytes)", o.name, o.size);
                }
            }
            if let Some(pb) = &pb {
                pb.set_length(p.total);
                pb.set_position(p.done);
            }
        },
        dmp_cli::key_notice(cli.common.quiet),
        dmp_cli::shutdown_signal(),
    )
    .await;
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    match res {
        Ok(r) => {
            if cli.json {
                // The file is in place: a closed stdout changes nothing.
                dmp_cli::say(format_args!("{}", serde_json::to_string(&r).expect("serializable")));
            } else {
                dmp_cli::say(format_args!(
                    "received {}: {} bytes in {:.2} s ({:.1} MiB/s), sha256 {}",
                    r.path, r.bytes, r.seconds, r.mb_per_s, r.sha256
                ));
                if r.resumed_bytes > 0 {
                    dmp_cli::say(format_args!(
                        "resumed at {} bytes; this run wrote {} bytes (the rate counts these only)",
                        r.resumed_bytes, r.written_bytes
                    ));
                }
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                TransferError::Interrupted => Exit::Interrupted,
                TransferError::Setup(_) => Exit::Usage,
                _ => Exit::Failed,
            }
        }
    }
}
