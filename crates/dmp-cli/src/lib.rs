//! Command-line plumbing shared by every tool: the common flags, logging
//! set-up, store selection, signal handling and exit codes.

pub mod config;

use clap::{Args, Parser};
pub use config::Config;
use dmp_core::PeerId;
use dmp_core::store::{DynStore, PeerOutbox, RoutedStore, StoreSpec, default_peers_file, load_peers_file};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes shared by every tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done: replies received, file verified.
    Ok = 0,
    /// The operation failed: no reply, refused, verification failed, timed out.
    Failed = 1,
    /// Usage or configuration error, or the store cannot be used.
    Usage = 2,
    /// Interrupted by SIGINT or SIGTERM.
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// The exit codes of dftp-send and dftp-receive, for `--help`.
pub const TRANSFER_EXIT_CODES: &str = "\
Exit codes: 0 done and verified; 1 refused, verification failed or timed out;
2 usage or store error; 130 interrupted (run the same command again to resume).";

/// Flags every tool accepts.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Where messages are exchanged: a folder path or file:///path,
    /// webdav://host[:port]/path, webdavs://..., or s3://bucket/prefix.
    /// Default: <Dropbox folder>/dmp when ~/.dropbox/info.json names one,
    /// else ~/.local/share/dmp/store.
    #[arg(long, env = "DMP_STORE", value_name = "URL", value_parser = Unechoed(store_value))]
    pub store: Option<StoreSpec>,

    /// Read peer ID's outbox at URL (http:// or https://, read-only) instead
    /// of <store>/ID. Repeatable; adds to and overrides the peers file.
    #[arg(long = "peer-outbox", value_name = "ID=URL", value_parser = Unechoed(peer_outbox_value))]
    pub peer_outbox: Vec<PeerOutbox>,

    /// File of `id = url` lines, as --peer-outbox [default: ~/.config/dmp/peers].
    #[arg(long, env = "DMP_PEERS_FILE", value_name = "FILE")]
    pub peers_file: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less output: results only, no progress, warnings and errors off.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Send and accept unencrypted, unauthenticated messages and chunks.
    /// Both sides must say so. Anyone who can read the store reads
    /// everything; anyone who can write it can forge messages.
    #[arg(long)]
    pub insecure_plaintext: bool,

    /// Accept a changed key of PEER deliberately (re-pin it).
    #[arg(long, value_name = "PEER")]
    pub accept_new_key: Option<dmp_core::PeerId>,

    /// Print this party's key fingerprint and exit.
    #[arg(long)]
    pub fingerprint: bool,

    /// Read settings from FILE [default: ~/.config/dmp/config.toml, or
    /// config.toml in $DMP_CONFIG_DIR]. Flags and environment variables
    /// override it.
    #[arg(long, env = "DMP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[arg(skip)]
    loaded: std::sync::OnceLock<Config>,
}

impl Common {
    /// Installs the tracing subscriber on stderr.
    pub fn init_logging(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            (false, _) => "trace",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours only on a terminal: a log file or a pipe gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init();
    }

    /// The configuration file, read once (see [`config`]).
    pub fn config(&self) -> anyhow::Result<&Config> {
        if let Some(c) = self.loaded.get() {
            return Ok(c);
        }
        let c = Config::load(self.config.as_deref())?;
        if let Some(p) = &c.path {
            tracing::info!("configuration from {}", p.display());
        }
        Ok(self.loaded.get_or_init(|| c))
    }

    /// The store spec: `--store`, else `DMP_STORE`, else the configuration
    /// file's `store`, else the default.
    pub fn store_spec(&self) -> anyhow::Result<StoreSpec> {
        let config = self.config()?;
        match (&self.store, &config.store) {
            (Some(s), _) => {
                tracing::info!("store: {s} (from --store or DMP_STORE)");
                Ok(s.clone())
            }
            (None, Some(s)) => {
                let file = config.path.as_deref().unwrap_or(std::path::Path::new("the configuration file"));
                tracing::info!("store: {s} (from {})", file.display());
                Ok(s.clone())
            }
            (None, None) => {
                let (s, why) = StoreSpec::default_spec()?;
                tracing::info!("store: {s} ({why})");
                Ok(s)
            }
        }
    }

    /// The peers' outboxes read from elsewhere: the configuration file's
    /// `[peers]`, then the peers file's entries, then `--peer-outbox` (a
    /// later entry for the same id wins). An entry of a file for `me` is
    /// skipped (one file may list everyone); a `--peer-outbox` for `me` is
    /// an error: my outbox is `<store>/<me>`.
    pub fn peer_outboxes(&self, me: &PeerId) -> anyhow::Result<Vec<PeerOutbox>> {
        if let Some(f) = self.peers_file.as_ref().filter(|f| !f.exists()) {
            anyhow::bail!("the peers file {} does not exist", f.display());
        }
        let mut all = self.config()?.peers.clone();
        let file = self.peers_file.clone().or_else(default_peers_file);
        let listed = match &file {
            // Its errors name the file; they are not about the store.
            Some(f) => load_peers_file(f).map_err(|e| match e {
                dmp_core::store::StoreError::BadSpec(m) => anyhow::anyhow!("peers file {m}"),
                e => e.into(),
            })?,
            None => Vec::new(),
        };
        if let Some(f) = file.as_ref().filter(|_| !listed.is_empty()) {
            tracing::info!("{} peer outbox(es) from {}", listed.len(), f.display());
        }
        for p in listed {
            all.retain(|q| q.id != p.id);
            all.push(p);
        }
        all.retain(|p| &p.id != me);
        for p in &self.peer_outbox {
            if &p.id == me {
                anyhow::bail!("--peer-outbox {p}: {me} is this party's own id; its outbox is always <store>/{me}");
            }
            all.retain(|q| q.id != p.id);
            all.push(p.clone());
        }
        Ok(all)
    }

    /// Opens the store for party `me` and checks that it can be listed; with
    /// peer outboxes (`--peer-outbox`, peers file), keys below `<id>/` of
    /// those peers are read from their URLs instead.
    ///
    /// A store that cannot be reached, or refuses the credentials, is an
    /// error naming the store (the caller exits 2); transient failures were
    /// already retried with back-off by then.
    pub async fn open_store(&self, me: &PeerId) -> anyhow::Result<(StoreSpec, DynStore)> {
        let spec = self.store_spec()?;
        let outboxes = self.peer_outboxes(me)?;
        for p in &outboxes {
            tracing::info!("reading the outbox of {} at {}", p.id, p.url);
        }
        let main = spec.open()?;
        let store: DynStore =
            if outboxes.is_empty() { main } else { Arc::new(RoutedStore::with_outboxes(main, &outboxes)?) };
        // The error names the store (every StoreError does). A store that
        // does not answer is retried for up to a minute: Ctrl-C is heard
        // meanwhile (exit 130, nothing was done yet).
        let root = dmp_core::store::Key::root();
        tokio::select! {
            r = store.list(&root) => r?,
            () = shutdown_signal() => {
                eprintln!("interrupted while waiting for {}", store.describe());
                std::process::exit(130);
            }
        };
        Ok((spec, store))
    }
}

impl Common {
    /// Loads (creating on first use) the identity of `me`, or `None` with
    /// `--insecure-plaintext`, which is announced loudly on stderr.
    pub fn security(&self, me: &dmp_core::PeerId) -> anyhow::Result<Option<dmp_core::drive::security::Security>> {
        use anyhow::Context;
        if self.insecure_plaintext {
            eprintln!(
                "WARNING: --insecure-plaintext: nothing is encrypted or authenticated; anyone who can read \
                 the store reads everything, anyone who can write it can forge messages"
            );
            return Ok(None);
        }
        let dir = dmp_core::keys::config_dir()?;
        let (identity, created) =
            dmp_core::keys::load_or_create_identity(&dir, me).context("loading this party's key")?;
        if created && !self.quiet {
            eprintln!("created a key for {me}: fingerprint {}", identity.public().fingerprint());
        }
        tracing::info!("{me}: key fingerprint {}", identity.public().fingerprint());
        Ok(Some(dmp_core::drive::security::Security {
            me: me.clone(),
            identity,
            known: std::sync::Arc::new(dmp_core::keys::KnownPeers::open(&dir)),
            rng: dmp_core::crypto::os_rng(),
            accept_new_key: self.accept_new_key.clone(),
        }))
    }

    /// With `--fingerprint`: prints `me`'s fingerprint on stdout and
    /// returns true (the caller exits 0).
    pub fn print_fingerprint(&self, me: &dmp_core::PeerId) -> anyhow::Result<bool> {
        if !self.fingerprint {
            return Ok(false);
        }
        let dir = dmp_core::keys::config_dir()?;
        let (identity, _) = dmp_core::keys::load_or_create_identity(&dir, me)?;
        anyhow::ensure!(say(format_args!("{me} {}", identity.public().fingerprint())), "cannot write to stdout");
        Ok(true)
    }
}

impl Common {
    /// With `--fingerprint`: prints `me`'s fingerprint and returns the exit
    /// code to stop with (0, or 2 when it cannot be read).
    pub fn fingerprint_exit(&self, me: &dmp_core::PeerId) -> Option<Exit> {
        match self.print_fingerprint(me) {
            Ok(true) => Some(Exit::Ok),
            Ok(false) => None,
            Err(e) => {
                report(&e);
                Some(Exit::Usage)
            }
        }
    }

    /// Opens the store and loads `me`'s keys; a failure is reported in one
    /// line and is a usage error.
    pub async fn setup(
        &self,
        me: &dmp_core::PeerId,
    ) -> Result<(StoreSpec, DynStore, Option<dmp_core::drive::security::Security>), Exit> {
        let (spec, store) = self.open_store(me).await.map_err(|e| {
            report(&e);
            Exit::Usage
        })?;
        let security = self.security(me).map_err(|e| {
            report(&e);
            Exit::Usage
        })?;
        Ok((spec, store, security))
    }

    /// The resume state file of `tool` for these `parts`. A transfer started
    /// with `--insecure-plaintext` cannot be resumed with encryption on, nor
    /// the other way round (the peer would refuse its messages): each mode
    /// keeps its own state.
    pub fn state_file(&self, tool: &str, parts: &[&str]) -> Option<std::path::PathBuf> {
        let mut parts = parts.to_vec();
        if self.insecure_plaintext {
            parts.push("insecure-plaintext");
        }
        dmp_core::state::state_file(tool, &parts)
    }
}

/// Prints a key notice (first contact, accepted new key) on stderr, unless
/// `-q` (then it is logged at info level for `-v`).
pub fn key_notice(quiet: bool) -> impl FnMut(dmp_core::keys::KeyNotice) {
    move |n| {
        if quiet {
            tracing::info!("{n}");
        } else {
            eprintln!("{n}");
        }
    }
}

/// A value parser whose error does not repeat the value: clap's own
/// message quotes it whole ("invalid value 'webdav://user:pass@h/x' for
/// ..."), and a store URL may carry a password, or be 100 KB long. The
/// error names the flag and says what is wrong; the parse function shows
/// the value, if at all, redacted and cut short.
#[derive(Clone)]
pub struct Unechoed<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Unechoed<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let flag = arg.and_then(|a| a.get_long()).map_or_else(|| "a value".to_owned(), |l| format!("--{l}"));
        let bad = |msg: &str| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{flag}: {msg}\n")).with_cmd(cmd)
        };
        let s = value.to_str().ok_or_else(|| bad("not valid UTF-8"))?;
        (self.0)(s).map_err(|msg| bad(&msg))
    }
}

/// `--store`: see [`StoreSpec`].
fn store_value(s: &str) -> Result<StoreSpec, String> {
    s.parse::<StoreSpec>().map_err(|e| e.to_string())
}

/// `--peer-outbox ID=URL`: see [`PeerOutbox`].
fn peer_outbox_value(s: &str) -> Result<PeerOutbox, String> {
    s.parse::<PeerOutbox>().map_err(|e| match e {
        dmp_core::store::StoreError::BadSpec(m) => m,
        e => e.to_string(),
    })
}

/// Parses the command line; a usage error prints one line and exits 2.
pub fn parse<T: Parser>() -> T {
    parse_from(std::env::args_os())
}

/// [`parse`] for a given argument list.
///
/// The hidden `--generate KIND` (see [`GENERATE`]) is handled first, so that
/// required arguments do not get in its way: it prints the man page or a
/// shell completion script for `T` on stdout and exits 0 (an unknown KIND
/// is a usage error). `cargo xtask dist` uses it.
pub fn parse_from<T: Parser>(args: impl IntoIterator<Item = std::ffi::OsString>) -> T {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if let Some(kind) = generate_request(&args) {
        let mut out = std::io::stdout().lock();
        match generate::<T>(&kind, &mut out) {
            Ok(()) => std::process::exit(Exit::Ok as i32),
            Err(e) => {
                eprintln!("error: {e} (see --help)");
                std::process::exit(Exit::Usage as i32);
            }
        }
    }
    match T::try_parse_from(args) {
        Ok(t) => t,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    std::process::exit(if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    });
                }
                _ => {
                    eprintln!("{}", usage_line(&e));
                    std::process::exit(Exit::Usage as i32);
                }
            }
        }
    }
}

/// The one line printed for a usage error (exit code 2): clap's first
/// paragraph, its lines joined (the missing arguments are listed on lines of
/// their own below "the following required arguments were not provided:").
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first: Vec<&str> =
        text.lines().skip_while(|l| l.trim().is_empty()).take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let line = if first.is_empty() { "error: invalid usage".to_owned() } else { first.join(" ") };
    format!("{line} (see --help)")
}

/// What the hidden `--generate` flag of every tool writes: a man page
/// (roff, for `man 1`) or a completion script for bash, zsh or fish.
pub const GENERATE: [&str; 4] = ["man", "complete-bash", "complete-zsh", "complete-fish"];

/// The value of `--generate KIND` or `--generate=KIND` among `args` (after
/// the program name, before a `--`); `Some("")` when the value is missing.
fn generate_request(args: &[std::ffi::OsString]) -> Option<String> {
    let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if a == "--" {
            return None;
        }
        if a == "--generate" {
            return Some(it.next().map(|v| v.into_owned()).unwrap_or_default());
        }
        if let Some(v) = a.strip_prefix("--generate=") {
            return Some(v.to_owned());
        }
    }
    None
}

/// Writes what `--generate kind` asks for (see [`GENERATE`]) for the
/// command line of `T` to `out`.
pub fn generate<T: clap::CommandFactory>(kind: &str, out: &mut dyn std::io::Write) -> Result<(), String> {
    use clap_complete::Shell;
    let mut cmd = T::command();
    let name = cmd.get_name().to_owned();
    let shell = match kind {
        "man" => {
            return match clap_mangen::Man::new(cmd).render(out) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing the man page: {e}")),
                _ => Ok(()),
            };
        }
        "complete-bash" => Shell::Bash,
        "complete-zsh" => Shell::Zsh,
        "complete-fish" => Shell::Fish,
        other => return Err(format!("--generate {other:?}: expected one of {}", GENERATE.join(", "))),
    };
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}

/// Prints `error: ...` for a failure, as one line.
pub fn report(err: &anyhow::Error) {
    let msg = format!("{err:#}").replace('\n', " ");
    eprintln!("error: {msg}");
}

/// Writes one line of results to stdout; `false` when stdout is gone (a
/// closed pipe, as in `| head -1`) or cannot be written, where `println!`
/// would panic.
pub fn say(line: std::fmt::Arguments<'_>) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_ok()
}

/// Logs files of the store that were not usable: a warning the first time
/// a file is rejected for a reason, the same again at debug level only (a
/// file that stays bad is read again with back-off for as long as the tool
/// runs, and anyone who can write the store can plant one).
#[derive(Default)]
pub struct RejectLog(std::collections::HashMap<String, String>);

impl RejectLog {
    pub fn note(&mut self, key: &impl std::fmt::Display, reason: &str) {
        let key = key.to_string();
        if self.0.get(&key).is_some_and(|r| r == reason) {
            tracing::debug!("ignored {key} again: {reason}");
            return;
        }
        tracing::warn!("ignored {key}: {reason}");
        if self.0.len() >= 1024 {
            self.0.clear();
        }
        self.0.insert(key, reason.to_owned());
    }
}

/// One run at a time per link: a second `tool` from `sender` to
/// `receiver` through the same store on this machine is a usage error (exit
/// code 2), before it touches the store or the state file. Two transfers at
/// once write the same outbox: one finished, the other waited for ever, and
/// the state left behind could wedge later runs; two ping clients lose each
/// other's replies. Keep the returned lock for the whole run.
pub fn lock_link(
    tool: &str,
    store_id: &str,
    sender: &dmp_core::PeerId,
    receiver: &dmp_core::PeerId,
) -> Result<Option<dmp_core::state::StateLock>, Exit> {
    lock_run(tool, "link", &[store_id, sender.as_str(), receiver.as_str()], &format!("from {sender} to {receiver}"))
}

/// One run at a time per party: a second `tool` as `me` through the same
/// store on this machine (a second ping server with one id, which would
/// write the same outbox) is a usage error (exit code 2). Keep the returned
/// lock for the whole run.
pub fn lock_party(
    tool: &str,
    store_id: &str,
    me: &dmp_core::PeerId,
) -> Result<Option<dmp_core::state::StateLock>, Exit> {
    lock_run(tool, "party", &[store_id, me.as_str()], &format!("as {me}"))
}

/// The lock of [`lock_link`] and [`lock_party`]: `kind` names the lock
/// file, `what` says whose run holds it.
fn lock_run(tool: &str, kind: &str, parts: &[&str], what: &str) -> Result<Option<dmp_core::state::StateLock>, Exit> {
    dmp_core::state::lock(&format!("{tool}-{kind}"), parts).map_err(|path| {
        eprintln!("error: another {tool} {what} through this store is running (it holds {})", path.display());
        Exit::Usage
    })
}

/// A usage error (exit code 2) when the two peer ids given are one: a party
/// cannot talk to itself through its own outbox, and the one that stops
/// first would remove the other's files (its key among them).
pub fn check_distinct(peer: (&str, &dmp_core::PeerId), me: (&str, &dmp_core::PeerId)) -> Result<(), Exit> {
    if peer.1 != me.1 {
        return Ok(());
    }
    eprintln!("error: {} and {} are both {:?}; they must differ (see --help)", peer.0, me.0, me.1.as_str());
    Err(Exit::Usage)
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A single-threaded runtime: the ping tools are I/O-light and latency-bound.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// The runtime of the transfer tools: the driver runs on the calling thread
/// (reading, hashing and writing chunks) while two worker threads move the
/// HTTP connections of a remote store.
pub fn transfer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// A progress bar on stderr with bytes, rate and ETA, or nothing when
/// stderr is not a terminal or output is quiet.
pub fn progress_bar(quiet: bool, prefix: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_owned());
    Some(pb)
}

/// Parses a number of seconds (fractions allowed) for timeouts and intervals.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.001..=31_536_000.0).contains(&v) {
        return Err(format!("{s:?}: must be between 0.001 and 31536000 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Tool {
        #[command(flatten)]
        common: Common,
    }

    /// The line a usage error prints, checked to be one (exit code 2).
    #[track_caller]
    fn usage_error(args: &[&str]) -> String {
        let argv = std::iter::once("tool").chain(args.iter().copied());
        let e = Tool::try_parse_from(argv).expect_err("a usage error");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "exit code 2, not help: {e}");
        let line = usage_line(&e);
        assert!(line.starts_with("error: ") && line.ends_with(" (see --help)"), "{line}");
        line
    }

    /// A missing argument is named in the one line, not left on the lines
    /// clap lists it on.
    #[test]
    fn a_missing_argument_is_named() {
        #[derive(Parser, Debug)]
        struct Two {
            first: String,
            second: String,
        }
        let e = Two::try_parse_from(["tool", "x"]).expect_err("a usage error");
        assert_eq!(usage_line(&e), "error: the following required arguments were not provided: <SECOND> (see --help)");
        let e = Two::try_parse_from(["tool", "x", "y", "--nope"]).expect_err("a usage error");
        let line = usage_line(&e);
        assert!(line.starts_with("error: unexpected argument '--nope' found") && !line.contains('\n'), "{line}");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_credentials() {
        for (args, secret) in [
            (["--store", "webdav://user:pass@127.0.0.1/x"], "pass"),
            (["--store", "webdav://user:pa/ss@127.0.0.1/x"], "pa/ss"),
            (["--store", "webdavs://user:pa?ss@127.0.0.1/x"], "pa?ss"),
            (["--store", "s3://user:secretkey@bucket/x"], "secretkey"),
            (["--peer-outbox", "bob=http://user:hunter2@127.0.0.1/x"], "hunter2"),
            (["--peer-outbox", "bob=http://user:hun/ter2@127.0.0.1/x"], "hun/ter2"),
        ] {
            let line = usage_error(&args);
            assert!(!line.contains(secret) && !line.contains("user:"), "{args:?}: {line}");
            assert!(line.starts_with(&format!("error: {}: ", args[0])), "{args:?}: {line}");
            assert!(line.contains("://***@") && line.contains("not accepted"), "{args:?}: {line}");
        }
        let line = usage_error(&["--store", "webdav://user:pass@127.0.0.1/x"]);
        assert_eq!(
            line,
            "error: --store: invalid store \"webdav://***@127.0.0.1/x\": credentials are not accepted on the \
             command line; set DMP_STORE_USER and DMP_STORE_PASSWORD, or add the host to ~/.netrc (an '@' in a \
             path is written %40) (see --help)"
        );
    }

    #[test]
    fn bad_urls_are_one_short_line_without_control_characters() {
        let long = format!("webdav://h/{}?q", "a/".repeat(50_000));
        let long_peer = format!("bob=http://h/{}?q", "a/".repeat(50_000));
        for args in [
            ["--store", long.as_str()],
            ["--peer-outbox", long_peer.as_str()],
            ["--peer-outbox", "bob=http://127.0.0.1/\x1b[2J"],
            ["--store", "/tmp/\x1b]0;title\x07"],
            ["--store", "webdav://127.0.0.1:0/x"],
            ["--peer-outbox", "bob=http://127.0.0.1:0/x"],
        ] {
            let line = usage_error(&args);
            assert!(line.len() < 600, "{} bytes: {}", line.len(), &line[..600.min(line.len())]);
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
        assert!(usage_error(&["--store", "webdav://127.0.0.1:0/x"]).contains("port 0"));
        assert!(usage_error(&["--peer-outbox", "bob=http://127.0.0.1/\x1b[2J"]).contains("control characters"));
    }

    #[test]
    fn good_urls_still_parse() {
        let t =
            Tool::try_parse_from(["tool", "--store", "webdav://127.0.0.1:8080/dav", "--peer-outbox", "bob=http://h/b"])
                .unwrap();
        assert_eq!(t.common.store.unwrap().to_string(), "webdav://127.0.0.1:8080/dav/");
        assert_eq!(t.common.peer_outbox[0].to_string(), "bob=http://h/b/");
    }
}
