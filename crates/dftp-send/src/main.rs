//! dftp-send: send one file through the store, in chunks that fit the
//! store's quota, verified and resumable.

use clap::Parser;
use dmp_cli::{Common, Exit};
use dmp_core::PeerId;
use dmp_core::drive::dftp::{Progress, SendOptions, TransferError, send_file};
use dmp_core::proto::dftp::{DEFAULT_BLOCK_SIZE, DEFAULT_WINDOW, SendConfig};
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
#[command(version, about, verbatim_doc_comment, after_help = dmp_cli::TRANSFER_EXIT_CODES)]
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
    /// The original spelling -bs SIZE works too. [default: 4MiB, or block_size
    /// in the configuration file's [dftp]]
    #[arg(short = 'b', long, value_name = "SIZE")]
    block_size: Option<ByteSize>,
    /// Most chunks staged in the store at once. [default: 8, or window in
    /// the configuration file]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    window: Option<u64>,
    /// Most bytes staged in the store at once [default: window × block size,
    /// or quota in the configuration file].
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

/// Block size, window and quota: the flags, else the configuration file, else the defaults.
struct Sizes {
    block_size: u64,
    window: u64,
    quota: Option<u64>,
}

fn sizes(cli: &Cli) -> anyhow::Result<Sizes> {
    let conf = &cli.common.config()?.dftp;
    let block_size = cli.block_size.or(conf.block_size).map_or(DEFAULT_BLOCK_SIZE, |b| b.0);
    let window = cli.window.or(conf.window).unwrap_or(DEFAULT_WINDOW);
    let quota = cli.quota.or(conf.quota).map(|q| q.0);
    if block_size == 0 || block_size > MAX_BLOCK_SIZE {
        anyhow::bail!("the block size must be between 1 byte and {}", ByteSize(MAX_BLOCK_SIZE));
    }
    // A quota holds at least one chunk object: the block, sealed unless plaintext.
    let seal = if cli.common.insecure_plaintext { 0 } else { dmp_core::crypto::SEAL_OVERHEAD as u64 };
    if let Some(q) = quota.filter(|q| *q < block_size + seal) {
        let plus = if seal > 0 { format!(" plus {seal} bytes of seal") } else { String::new() };
        anyhow::bail!(
            "the quota ({}) must hold one chunk: the block size ({}){plus}",
            ByteSize(q),
            ByteSize(block_size)
        );
    }
    Ok(Sizes { block_size, window, quota })
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
    let sizes = match sizes(&cli) {
        Ok(s) => s,
        Err(e) => {
            dmp_cli::report(&e);
            return Exit::Usage.into();
        }
    };
    dmp_cli::transfer_runtime().block_on(run(cli, sizes)).into()
}

async fn run(cli: Cli, sizes: Sizes) -> Exit {
    if let Err(exit) = dmp_cli::check_distinct(("RECEIVER-ID", &cli.receiver), ("SENDER-ID", &cli.sender)) {
        return exit;
    }
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
    let _lock = match dmp_cli::lock_link("dftp-send", &store_id, &cli.sender, &cli.receiver) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let state_file =
        cli.common.state_file("send", &[store_id.as_str(), cli.sender.as_str(), cli.receiver.as_str(), &path]);
    let opts = SendOptions {
        file: cli.file.clone(),
        cfg: SendConfig {
            block_size: sizes.block_size,
            window: sizes.window,
            quota: sizes.quota.unwrap_or(u64::MAX),
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
                // The file is delivered: a closed stdout changes nothing.
                dmp_cli::say(format_args!("{}", serde_json::to_string(&r).expect("serializable")));
            } else {
                dmp_cli::say(format_args!(
                    "sent {}: {} bytes in {:.2} s ({:.1} MiB/s), sha256 {}",
                    r.file, r.bytes, r.seconds, r.mb_per_s, r.sha256
                ));
                if r.resumed_bytes > 0 {
                    dmp_cli::say(format_args!(
                        "resumed at {} bytes; this run published {} bytes",
                        r.resumed_bytes, r.sent_bytes
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
