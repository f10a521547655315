//! dftp-send: send one file through the store, in chunks that fit the
//! store's quota, verified and resumable.

use clap::Parser;
use dmp_cli::{Common, Exit};
use dmp_core::PeerId;
use dmp_core::drive::dftp::{Progress, SendOptions, TransferError, send_file};
use dmp_core::proto::dftp::{DEFAULT_WINDOW, SendConfig};
use dmp_core::proto::dftp_msg::{MAX_BLOCK_SIZE, check_file_name};
use dmp_core::size::ByteSize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Send a file to a dftp-receive through a shared store. Only a few chunks
/// sit in the store at a time, so the file may be far larger than the
/// store's quota. Run the same command again to resume after an interruption.
///
/// Examples:
///   dftp-send bob alice big.iso
///   dftp-send bob alice big.iso -b 8m --window 8 --store ~/Dropbox/dmp
///   dftp-send bob alice big.iso -bs 1k --quota 100m --json
#[derive(Parser, Debug)]
#[command(version, about, verbatim_doc_comment)]
struct Cli {
    /// The receiver's peer id.
    #[arg(value_name = "RECEIVER-ID")]
    receiver: PeerId,
    /// This sender's peer id.
    #[arg(value_name = "SENDER-ID")]
    sender: PeerId,
    /// The file to send.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Chunk size: bytes with an optional suffix k, m, g (powers of 1024) or KiB/MiB/GiB.
    /// The original spelling -bs SIZE works too.
    #[arg(short = 'b', long, value_name = "SIZE", default_value = "4MiB")]
    block_size: ByteSize,
    /// Most chunks staged in the store at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WINDOW, value_parser = clap::value_parser!(u64).range(1..=1024))]
    window: u64,
    /// Most bytes staged in the store at once (default: window × block size).
    #[arg(long, value_name = "SIZE")]
    quota: Option<ByteSize>,
    /// Give up when the receiver shows no progress for this many seconds (default: wait).
    #[arg(long, value_name = "SECONDS", value_parser = dmp_cli::parse_seconds)]
    timeout: Option<Duration>,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

/// Accepts the 2013 spelling `-bs SIZE` (and `-bs=SIZE`, `-bsSIZE`).
fn args() -> Vec<std::ffi::OsString> {
    std::env::args_os()
        .flat_map(|a| match a.to_str() {
            Some("-bs") => vec!["--block-size".into()],
            Some(s) if s.starts_with("-bs=") => vec![format!("--block-size={}", &s[4..]).into()],
            Some(s) if s.starts_with("-bs") && s.len() > 3 && s.as_bytes()[3].is_ascii_digit() => {
                vec![format!("--block-size={}", &s[3..]).into()]
            }
            _ => vec![a],
        })
        .collect()
}

/// A path for a message: as it is, or quoted and escaped when it holds
/// control or escape characters (a terminal would obey them) or is not UTF-8.
fn shown(p: &std::path::Path) -> String {
    match p.to_str() {
        Some(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => format!("{p:?}"),
    }
}

fn main() -> ExitCode {
    let cli: Cli = dmp_cli::parse_from(args());
    cli.common.init_logging();
    if cli.block_size.0 == 0 || cli.block_size.0 > MAX_BLOCK_SIZE {
        eprintln!("error: --block-size must be between 1 byte and {}", ByteSize(MAX_BLOCK_SIZE));
        return Exit::Usage.into();
    }
    if cli.quota.is_some_and(|q| q.0 < cli.block_size.0) {
        eprintln!(
            "error: --quota ({}) must be at least the block size ({})",
            cli.quota.unwrap_or(ByteSize(0)),
            cli.block_size
        );
        return Exit::Usage.into();
    }
    dmp_cli::transfer_runtime().block_on(run(cli)).into()
}

async fn run(cli: Cli) -> Exit {
    if let Some(exit) = cli.common.fingerprint_exit(&cli.sender) {
        return exit;
    }
    // Before anything is printed: a usage error is one line.
    match std::fs::metadata(&cli.file) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            eprintln!("error: {} is not a regular file", shown(&cli.file));
            return Exit::Usage;
        }
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", shown(&cli.file));
            return Exit::Usage;
        }
    }
    // The name travels to the receiver, which refuses a bad one: say so
    // now, in one line, before anything else is printed.
    let name = cli.file.file_name().and_then(|n| n.to_str()).ok_or("the file name is not UTF-8".to_owned());
    if let Err(e) = name.and_then(|n| check_file_name(n).map_err(|e| e.to_string())) {
        eprintln!("error: cannot send {}: {e}", shown(&cli.file));
        return Exit::Usage;
    }
    let (spec, store, security) = match cli.common.setup(&cli.sender).await {
        Ok(s) => s,
        Err(exit) => return exit,
    };
    let canonical = std::fs::canonicalize(&cli.file).unwrap_or_else(|_| cli.file.clone());
    let (store_id, path) = (spec.identity(), canonical.to_string_lossy());
    let state_file =
        cli.common.state_file("send", &[store_id.as_str(), cli.sender.as_str(), cli.receiver.as_str(), &path]);
    let opts = SendOptions {
        file: cli.file.clone(),
        cfg: SendConfig {
            block_size: cli.block_size.0,
            window: cli.window,
            quota: cli.quota.map_or(u64::MAX, |q| q.0),
            link: dmp_core::drive::link_config_for(store.as_ref()),
        },
        state_file,
        timeout: cli.timeout,
        security,
    };
    if !cli.json && !cli.common.quiet {
        eprintln!("offering {} to {} via {spec}", shown(&cli.file), cli.receiver);
    }
    let pb = dmp_cli::progress_bar(cli.common.quiet, "sending");
    let res = send_file(
        store.as_ref(),
        cli.sender.clone(),
        cli.receiver.clone(),
        opts,
        |p: Progress| {
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
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "sent {}: {} bytes in {:.2} s ({:.1} MiB/s), sha256 {}",
                    r.file, r.bytes, r.seconds, r.mb_per_s, r.sha256
                );
                if r.resumed_bytes > 0 {
                    println!("resumed at {} bytes; this run published {} bytes", r.resumed_bytes, r.sent_bytes);
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
