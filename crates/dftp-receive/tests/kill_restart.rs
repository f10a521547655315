//! Real processes, real faults: 20 SIGKILLs at seeded random moments of one
//! transfer over a folder store, alternating sender and receiver; each
//! killed tool is started again with the same command line. The file must
//! arrive byte-identical, the store and the state directory must be clean,
//! and the test prints how many bytes were published again.
//!
//! Re-sent bytes are counted two ways: the final sender run's own report
//! (`resumed_bytes`, `sent_bytes`), and a watcher that notes every chunk
//! object that appears in the sender's outbox by (name, inode), counted per
//! chunk index: a chunk published again shows up under a new name (a fresh
//! seal, in secure mode) or under its old name with a new inode (the folder
//! store publishes by rename). The watcher polls, so its count is a lower
//! bound (a chunk written and deleted between two looks is missed).
//!
//! `DMP_TEST_SEED` replays a run.

use dmp_testkit::{Proc, Sandbox, TIMEOUT, entries, file_len, files_under, random_file, sha256_file, wait_until};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const BLOCK: u64 = 256 * KIB;
const KILLS: usize = 20;

fn part_len(dir: &Path) -> u64 {
    dmp_testkit::find_file(dir, |n| n.starts_with(".dftp-") && n.ends_with(".part"))
        .and_then(|p| file_len(&p))
        .unwrap_or(0)
}

/// Every (chunk object name, inode) seen in `dir` until stopped.
struct ChunkWatcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<BTreeMap<String, BTreeSet<u64>>>>,
}

impl ChunkWatcher {
    fn start(dir: PathBuf) -> ChunkWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
            while !flag.load(Ordering::Relaxed) {
                for ent in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = ent.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".chunk") {
                        if let Ok(m) = ent.metadata() {
                            seen.entry(name).or_default().insert(m.ino());
                        }
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            seen
        });
        ChunkWatcher { stop, handle: Some(handle) }
    }

    fn finish(mut self) -> BTreeMap<String, BTreeSet<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("watcher")
    }
}

impl Drop for ChunkWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn twenty_sigkills_alternating_sender_and_receiver() {
    let started = Instant::now();
    let seed = dmp_testkit::seed("twenty_sigkills_alternating_sender_and_receiver");
    let mut rng = fastrand::Rng::with_seed(seed);
    // `DMP_KILL_TEST_MIB` (default 48): a release build wants more.
    let size = std::env::var("DMP_KILL_TEST_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(48u64) * MIB;
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join("big.bin");
    random_file(&src, size, seed);
    let want = sha256_file(&src);
    let dir = sb.mkdir("dl");
    let store = sb.store.clone();
    let send_args: Vec<OsString> = ["bob", "alice"]
        .iter()
        .map(OsString::from)
        .chain([src.clone().into_os_string()])
        .chain(["-b", "256k", "--json", "--store"].iter().map(OsString::from))
        .chain([store.clone().into_os_string()])
        .collect();
    let recv_args: Vec<OsString> = ["alice", "bob"]
        .iter()
        .map(OsString::from)
        .chain([dir.clone().into_os_string()])
        .chain(["--json", "--store"].iter().map(OsString::from))
        .chain([store.into_os_string()])
        .collect();
    let watcher = ChunkWatcher::start(sb.outbox("alice", "bob"));

    let mut send: Proc = sb.spawn("dftp-send", &send_args);
    let mut recv: Proc = sb.spawn("dftp-receive", &recv_args);
    // The kill points: 20 random points of the receiver's progress between
    // 2% and 95% of the file, in order; a quarter of the kills come earlier,
    // after a random time since the last restart (0-150 ms: start-up, key
    // and state loading, re-hashing the prefix). A point the transfer has
    // already passed kills the next process at once. So the 20 kills fit in
    // the file however fast the build is.
    let mut points: Vec<u64> = (0..KILLS).map(|_| rng.u64(size / 50..=size * 95 / 100)).collect();
    points.sort_unstable();
    let mut at_kill = Vec::new();
    for (k, point) in points.iter().copied().enumerate() {
        let sender = k % 2 == 0;
        let by_time = rng.u8(..4) == 0;
        let delay = Duration::from_millis(rng.u64(0..150));
        let t0 = Instant::now();
        wait_until(TIMEOUT, "the moment of the next kill", || {
            (by_time && t0.elapsed() >= delay) || part_len(&dir) >= point
        });
        let victim = if sender { &mut send } else { &mut recv };
        victim.signal("STOP");
        let at = part_len(&dir);
        assert!(
            victim.is_running(),
            "kill {k}: {} ended before it was killed; the file is too small for {KILLS} kills\n{}",
            victim.label(),
            victim.stderr_so_far()
        );
        assert!(at < size, "kill {k}: the receiver already had the whole file");
        let how = if by_time && part_len(&dir) < point {
            format!("{} ms after start", delay.as_millis())
        } else {
            format!("point {}KiB", point / KIB)
        };
        at_kill.push(format!("{}{}@{}KiB({how})", k + 1, if sender { "S" } else { "R" }, at / KIB));
        // Replace the killed process with a new one, once the old one is
        // gone: a run of the same link refuses to start while another
        // (here the stopped one) holds its lock.
        let (slot, tool, a) =
            if sender { (&mut send, "dftp-send", &send_args) } else { (&mut recv, "dftp-receive", &recv_args) };
        let f = slot.kill_in_place();
        assert_eq!(f.signal, Some(9), "{}", f.describe());
        *slot = sb.spawn(tool, a);
    }
    eprintln!("kills (S sender, R receiver, at the receiver's bytes): {}", at_kill.join(" "));
    let snd = send.wait();
    let r = recv.wait();
    snd.expect_ok();
    r.expect_ok();
    let seen = watcher.finish();

    // Byte-identical, nothing else in DIR, the store and the state clean.
    assert_eq!(entries(&dir), vec!["big.bin".to_owned()], "DIR holds the file and nothing else");
    assert_eq!(sha256_file(&dir.join("big.bin")), want, "SHA-256 of what arrived");
    for (a, b) in [("alice", "bob"), ("bob", "alice")] {
        let left = files_under(&sb.outbox(a, b));
        assert!(left.is_empty(), "files left in the store under {a}/{b}: {left:?}");
    }
    assert_eq!(files_under(&sb.state), Vec::<PathBuf>::new(), "state files left after success");

    let sj: serde_json::Value = serde_json::from_str(snd.stdout.trim()).expect("sender JSON");
    let rj: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("receiver JSON");
    assert_eq!(sj["sha256"], want.as_str());
    assert_eq!(rj["sha256"], want.as_str());
    let (resumed, published) = (sj["resumed_bytes"].as_u64().unwrap(), sj["sent_bytes"].as_u64().unwrap());
    let final_resent = (resumed + published).saturating_sub(size);
    let chunks = size.div_ceil(BLOCK);
    let writes: u64 = seen.values().map(|s| s.len() as u64).sum();
    let mut per_index: BTreeMap<u64, u64> = BTreeMap::new();
    for (name, inodes) in &seen {
        if let Some((index, _)) = dmp_core::proto::dftp_msg::parse_chunk_object_name(name) {
            *per_index.entry(index).or_default() += inodes.len() as u64;
        }
    }
    let rewritten = writes.saturating_sub(per_index.len() as u64);
    let resent_bytes: u64 = per_index.iter().map(|(i, n)| (n - 1) * BLOCK.min(size - i * BLOCK)).sum();
    eprintln!(
        "SIGKILLs survived: {KILLS} of {KILLS} ({} sender, {} receiver); {size} bytes byte-identical in {:.1} s",
        KILLS.div_ceil(2),
        KILLS / 2,
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "final sender run: resumed at {resumed} bytes; this run published {published} bytes ({final_resent} re-sent); \
         final receiver run wrote {} bytes",
        rj["written_bytes"]
    );
    eprintln!(
        "chunk objects seen: {} names for {} of {chunks} chunks, {writes} writes observed: at least {rewritten} \
         chunks ({resent_bytes} bytes) published again over all runs",
        seen.len(),
        per_index.len()
    );
    assert!(published < size, "the last sender run resumed instead of sending everything: {sj}");
}
