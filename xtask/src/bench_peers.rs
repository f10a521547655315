//! The tools a user would otherwise pick to move a file, run on the same file
//! in the same runs as DFTP (issue 7): magic-wormhole, with its own mailbox
//! server and transit relay on loopback, and NNCP, two nodes on this machine
//! exchanging the file through a shared directory. `cargo xtask bench
//! --peers` installs the Debian packages when they are missing; without them
//! the table says why a comparison was not made.

use crate::util::{Proc, free_port, output, sha256_file, wait_port, which};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian packages of the two tools.
const WORMHOLE_PKGS: &[&str] =
    &["magic-wormhole", "python3-magic-wormhole-mailbox-server", "magic-wormhole-transit-relay"];
const NNCP_PKGS: &[&str] = &["nncp"];

/// How long one transfer of a peer tool may take.
const TIMEOUT: Duration = Duration::from_secs(900);

/// `twist` of the system Python's Twisted (Debian calls it `twist3`).
fn twist() -> Option<PathBuf> {
    which("twist3").or_else(|| which("twist"))
}

/// True when `twist <plugin> --help` works, i.e. the plugin is installed.
fn twist_plugin(twist: &Path, plugin: &str) -> bool {
    Command::new(twist)
        .args([plugin, "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why magic-wormhole cannot run here, if it cannot.
fn wormhole_missing() -> Option<String> {
    if which("wormhole").is_none() {
        return Some("wormhole is not installed".into());
    }
    let Some(twist) = twist() else { return Some("twist (python3-twisted) is not installed".into()) };
    if !twist_plugin(&twist, "wormhole-mailbox") {
        return Some("the mailbox server (python3-magic-wormhole-mailbox-server) is not installed".into());
    }
    if !twist_plugin(&twist, "transitrelay") {
        return Some("the transit relay (magic-wormhole-transit-relay) is not installed".into());
    }
    None
}

/// Why NNCP cannot run here, if it cannot.
fn nncp_missing() -> Option<String> {
    ["nncp-cfgnew", "nncp-file", "nncp-xfer", "nncp-toss"]
        .into_iter()
        .find(|b| which(b).is_none())
        .map(|b| format!("{b} is not installed (Debian package nncp)"))
}

/// `--peers`: installs the missing tools with apt-get. A failure is reported
/// and the benchmarks go on (their rows then say "not available").
pub fn install() {
    let mut pkgs = Vec::new();
    if wormhole_missing().is_some() {
        pkgs.extend_from_slice(WORMHOLE_PKGS);
    }
    if nncp_missing().is_some() {
        pkgs.extend_from_slice(NNCP_PKGS);
    }
    if pkgs.is_empty() {
        println!("magic-wormhole and NNCP are installed");
        return;
    }
    let res = (|| -> Result<()> {
        if which("apt-get").is_none() {
            bail!("apt-get is not available (install {} by hand)", pkgs.join(" "));
        }
        let apt = |args: &[&str]| -> Result<()> {
            println!("$ apt-get {}", args.join(" "));
            let mut cmd = Command::new("apt-get");
            cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            crate::util::run(&mut cmd, "apt-get")
        };
        apt(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend_from_slice(&pkgs);
        apt(&args)
    })();
    if let Err(e) = res {
        eprintln!("warning: could not install the peer tools: {e:#}");
    }
}

/// The row note for a comparison that cannot be made.
fn unavailable(why: &str) -> String {
    format!("not available: {why} (cargo xtask bench --peers installs it)")
}

/// A magic-wormhole mailbox server and transit relay on loopback, stopped
/// when dropped; both sides pass `--no-listen`, so that the file goes
/// through the local relay over 127.0.0.1 and nothing leaves the machine.
pub struct Wormhole {
    _mailbox: Proc,
    _relay: Proc,
    mailbox_port: u16,
    relay_port: u16,
}

impl Wormhole {
    /// Starts the servers in `<dir>/server` (logs, and pid files for
    /// `stop_leftovers`); the error says why magic-wormhole is not available.
    pub fn start(dir: &Path) -> Result<Wormhole, String> {
        if let Some(why) = wormhole_missing() {
            return Err(unavailable(&why));
        }
        Self::start_servers(&dir.join("server")).map_err(|e| format!("not available: {e:#}").replace(['\n', '|'], " "))
    }

    fn start_servers(dir: &Path) -> Result<Wormhole> {
        std::fs::create_dir_all(dir)?;
        let twist = twist().context("no twist")?;
        let (mailbox_port, relay_port) = (free_port()?, free_port()?);
        let mut mailbox = Command::new(&twist);
        mailbox
            .arg("wormhole-mailbox")
            .arg(format!("--port=tcp:{mailbox_port}:interface=127.0.0.1"))
            .arg(format!("--channel-db={}", dir.join("mailbox.sqlite").display()))
            .current_dir(dir);
        let mailbox = Proc::spawn_logged(&mut mailbox, "wormhole-mailbox", dir)?;
        let mut relay = Command::new(&twist);
        relay.arg("transitrelay").arg(format!("--port=tcp:{relay_port}:interface=127.0.0.1")).current_dir(dir);
        let relay = Proc::spawn_logged(&mut relay, "transit-relay", dir)?;
        for (p, port) in [(&mailbox, mailbox_port), (&relay, relay_port)] {
            std::fs::write(dir.join(format!("{}.pid", p.name)), p.pid().to_string())?;
            wait_port(port, Duration::from_secs(20)).with_context(|| format!("{} did not start", p.name))?;
        }
        Ok(Wormhole { _mailbox: mailbox, _relay: relay, mailbox_port, relay_port })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("wormhole");
        c.arg("--relay-url")
            .arg(format!("ws://127.0.0.1:{}/v1", self.mailbox_port))
            .arg("--transit-helper")
            .arg(format!("tcp:127.0.0.1:{}", self.relay_port));
        c
    }

    /// Sends `src` with `wormhole send` to `wormhole receive` started at the
    /// same time, into a fresh directory below `dir`; returns the seconds
    /// until both ended. The received file must hash to `want`.
    pub fn transfer(&self, src: &Path, want: &str, dir: &Path, run: usize) -> Result<f64> {
        let out = dir.join(format!("wormhole-{run}"));
        std::fs::create_dir_all(&out)?;
        let code = format!("{run}-dftp-bench");
        let t = Instant::now();
        let mut recv = self.cmd();
        recv.args(["receive", "--no-listen", "--hide-progress", "--accept-file", "-o"])
            .arg(out.join("file"))
            .arg(&code);
        let mut recv = Proc::spawn_logged(&mut recv, "wormhole-receive", &out)?;
        let mut send = self.cmd();
        send.args(["send", "--no-listen", "--hide-progress", "--code", &code]).arg(src);
        let mut send = Proc::spawn_logged(&mut send, "wormhole-send", &out)?;
        let st = recv.wait_timeout(TIMEOUT)?;
        recv.check(st)?;
        let st = send.wait_timeout(Duration::from_secs(60))?;
        send.check(st)?;
        let secs = t.elapsed().as_secs_f64();
        verify(&out.join("file"), want)?;
        std::fs::remove_dir_all(&out).ok();
        Ok(secs)
    }
}

/// Two NNCP nodes on this machine, `a` sending to `b` through a shared
/// directory: `nncp-file` (encrypt into a's spool), `nncp-xfer` of a (to the
/// directory), `nncp-xfer` of b (into b's spool), `nncp-toss` of b (decrypt
/// into b's incoming directory).
pub struct Nncp {
    /// The `self` section (keys) of each node, from `nncp-cfgnew`.
    keys: [Map<String, Value>; 2],
}

impl Nncp {
    /// Generates both nodes' keys; the error says why NNCP is not available.
    pub fn new(dir: &Path) -> Result<Nncp, String> {
        if let Some(why) = nncp_missing() {
            return Err(unavailable(&why));
        }
        let keys = || -> Result<Map<String, Value>> {
            let cfg =
                output(Command::new("nncp-cfgnew").arg("-nocomments"), "nncp-cfgnew", Duration::from_secs(30), dir)?;
            self_keys(&cfg)
        };
        (|| Ok::<_, anyhow::Error>(Nncp { keys: [keys()?, keys()?] }))()
            .map_err(|e| format!("not available: {e:#}").replace(['\n', '|'], " "))
    }

    /// Writes node `i`'s configuration, with its spool below `dir`, and returns its path.
    fn config(&self, i: usize, dir: &Path) -> Result<PathBuf> {
        let (me, peer) = (&self.keys[i], &self.keys[1 - i]);
        let public = |k: &Map<String, Value>| -> Map<String, Value> {
            ["id", "exchpub", "signpub", "noisepub"]
                .iter()
                .filter_map(|f| Some((f.to_string(), k.get(*f)?.clone())))
                .collect()
        };
        let node = dir.join(format!("node{i}"));
        let mut neigh = public(peer);
        neigh.insert("incoming".into(), json!(node.join("incoming")));
        let cfg = json!({
            "spool": node.join("spool"),
            "log": node.join("log"),
            "self": me,
            "neigh": { "self": public(me), "peer": neigh },
        });
        for d in ["spool", "incoming"] {
            std::fs::create_dir_all(node.join(d))?;
        }
        let path = node.join("nncp.json");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
        Ok(path)
    }

    /// Moves `src` from node 0 to node 1 through fresh spools and a fresh
    /// shared directory below `dir`; returns the seconds the whole pipeline
    /// took. The received file must hash to `want`.
    pub fn transfer(&self, src: &Path, want: &str, dir: &Path, run: usize) -> Result<f64> {
        let work = dir.join(format!("nncp-{run}"));
        let shared = work.join("shared");
        std::fs::create_dir_all(&shared)?;
        let (a, b) = (self.config(0, &work)?, self.config(1, &work)?);
        let step = |tool: &str, cfg: &Path, args: &[&std::ffi::OsStr]| -> Result<()> {
            let mut c = Command::new(tool);
            c.arg("-cfg").arg(cfg).arg("-quiet").args(args);
            output(&mut c, tool, TIMEOUT, &work).map(drop)
        };
        let t = Instant::now();
        step("nncp-file", &a, &[src.as_os_str(), "peer:".as_ref()])?;
        step("nncp-xfer", &a, &["-mkdir".as_ref(), shared.as_os_str()])?;
        step("nncp-xfer", &b, &[shared.as_os_str()])?;
        step("nncp-toss", &b, &[])?;
        let secs = t.elapsed().as_secs_f64();
        let name = src.file_name().context("no file name")?;
        verify(&work.join("node1/incoming").join(name), want)?;
        std::fs::remove_dir_all(&work).ok();
        Ok(secs)
    }
}

/// The `self: { ... }` section of an `nncp-cfgnew -nocomments` output, as JSON.
fn self_keys(cfg: &str) -> Result<Map<String, Value>> {
    let mut lines = cfg.lines().map(str::trim).skip_while(|l| *l != "self: {").skip(1);
    let mut keys = Map::new();
    for l in lines.by_ref().take_while(|l| *l != "}") {
        if let Some((k, v)) = l.split_once(": ") {
            keys.insert(k.to_owned(), json!(v));
        }
    }
    if !["id", "exchprv", "signprv", "noiseprv"].iter().all(|k| keys.contains_key(*k)) {
        bail!("unexpected nncp-cfgnew output (no keys in its self section)");
    }
    Ok(keys)
}

fn verify(got: &Path, want: &str) -> Result<()> {
    let have = sha256_file(got)?;
    if have != want {
        bail!("{} differs from the sent file (SHA-256)", got.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_nncp_keys() {
        let cfg = "{\n  spool: /var/spool/nncp\n  self: {\n    # DO NOT show\n    id: ID1\n    exchpub: EP\n    \
                   exchprv: EX\n    signpub: SP\n    signprv: SX\n    noiseprv: NX\n    noisepub: NP\n  }\n  neigh: {\n    \
                   self: {\n      id: ID1\n    }\n  }\n}\n";
        let k = super::self_keys(cfg).unwrap();
        assert_eq!(k["id"], "ID1");
        assert_eq!(k["noisepub"], "NP");
        assert_eq!(k.len(), 7);
    }
}
