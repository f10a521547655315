//! `cargo xtask demo`: the main job on a temporary local-folder store: a ping
//! server and client, then (when the DFTP tools exist) a 64 MiB file transfer.

use crate::util::{Proc, TempDir, build_release_tools, have_dftp, heading, human_size, random_file, sha256_file};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "bob";
const CLIENT: &str = "alice";
const FILE_LEN: u64 = 64 << 20;

pub fn run() -> Result<()> {
    heading("building the tools (release)");
    let bin = build_release_tools()?;
    let tmp = TempDir::new_in(&std::env::temp_dir(), "dmp-demo")?;
    let store = tmp.join("store");
    heading(&format!("store: a temporary local folder, {}", store.display()));
    println!("(any folder both parties can reach works the same: a Dropbox or Syncthing folder, a network share)");

    ping(&bin, &store)?;
    if have_dftp() {
        dftp(&bin, &store, tmp.path())?;
    } else {
        heading("DFTP file transfer: skipped (crates/dftp-send and crates/dftp-receive are not in this checkout)");
    }

    heading(&format!("cleaning up: removing {}", tmp.path().display()));
    drop(tmp);
    println!("demo done");
    Ok(())
}

fn ping(bin: &Path, store: &Path) -> Result<()> {
    heading(&format!("starting dmp-ping-server {SERVER} --store {}", store.display()));
    let mut server = Proc::spawn(
        Command::new(bin.join("dmp-ping-server"))
            .env("DMP_CONFIG_DIR", sandbox(store, "config"))
            .env("DMP_STATE_DIR", sandbox(store, "state"))
            .arg(SERVER)
            .arg("--store")
            .arg(store)
            .stdin(Stdio::null()),
        "dmp-ping-server",
    )?;
    std::thread::sleep(Duration::from_millis(300));
    if let Some(st) = server.try_wait()? {
        bail!("dmp-ping-server exited at once ({st})");
    }
    println!("server running, pid {}", server.pid());

    heading(&format!("dmp-ping-client {SERVER} {CLIENT} -c 5 -i 0.2 --store {}", store.display()));
    let st = Command::new(bin.join("dmp-ping-client"))
        .env("DMP_CONFIG_DIR", sandbox(store, "config"))
        .env("DMP_STATE_DIR", sandbox(store, "state"))
        .args([SERVER, CLIENT, "-c", "5", "-i", "0.2"])
        .arg("--store")
        .arg(store)
        .stdin(Stdio::null())
        .status()
        .context("starting dmp-ping-client")?;
    println!("(dmp-ping-client exit code: {})", st.code().map_or("signal".into(), |c| c.to_string()));

    heading("stopping the server with SIGTERM");
    let sst = server.terminate()?;
    println!("dmp-ping-server exit code: {}", sst.code().map_or("signal".into(), |c| c.to_string()));
    if !st.success() {
        bail!("dmp-ping-client failed ({st})");
    }
    server.check(sst)
}

fn dftp(bin: &Path, store: &Path, tmp: &Path) -> Result<()> {
    let (sender, receiver) = ("alice", "bob");
    let file = tmp.join("random-64MiB.bin");
    let out_dir = tmp.join("received");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    heading(&format!("DFTP: a {} random file, {sender} sends to {receiver}", human_size(FILE_LEN)));
    random_file(&file, FILE_LEN)?;
    println!("$ dftp-receive {sender} {receiver} {} --store {}", out_dir.display(), store.display());
    println!("$ dftp-send {receiver} {sender} {} --store {}", file.display(), store.display());

    let started = Instant::now();
    let mut recv = Proc::spawn_logged(
        Command::new(bin.join("dftp-receive"))
            .env("DMP_CONFIG_DIR", sandbox(store, "config"))
            .env("DMP_STATE_DIR", sandbox(store, "state"))
            .args([sender, receiver])
            .arg(&out_dir)
            .arg("--store")
            .arg(store),
        "dftp-receive",
        tmp,
    )?;
    let mut send = Proc::spawn_logged(
        Command::new(bin.join("dftp-send"))
            .env("DMP_CONFIG_DIR", sandbox(store, "config"))
            .env("DMP_STATE_DIR", sandbox(store, "state"))
            .args([receiver, sender])
            .arg(&file)
            .arg("--store")
            .arg(store),
        "dftp-send",
        tmp,
    )?;
    let send_st = send.wait_timeout(Duration::from_secs(300))?;
    let recv_st = recv.wait_timeout(Duration::from_secs(60))?;
    let secs = started.elapsed().as_secs_f64();
    for (p, st) in [(&send, send_st), (&recv, recv_st)] {
        heading(&format!("{} output (exit code {})", p.name, st.code().map_or("signal".into(), |c| c.to_string())));
        print!("{}", p.stdout());
        print!("{}", p.stderr());
    }
    send.check(send_st)?;
    recv.check(recv_st)?;

    heading("SHA-256 comparison");
    let got = out_dir.join(file.file_name().expect("file name"));
    let a = sha256_file(&file)?;
    let b = sha256_file(&got).with_context(|| format!("the received file should be {}", got.display()))?;
    println!("sent     {a}  {}", file.display());
    println!("received {b}  {}", got.display());
    if a != b {
        bail!("SHA-256 differs: the received file is not the sent file");
    }
    println!("identical; {} in {secs:.2} s for the pair of tools", human_size(FILE_LEN));
    Ok(())
}

/// Keys and resume state of the demo's parties live next to its store, so
/// the demo leaves nothing in the user's own configuration.
fn sandbox(store: &Path, what: &str) -> std::path::PathBuf {
    store.parent().unwrap_or(store).join(what)
}
