//! Real processes, real faults: a store that fills up. The store is a
//! small tmpfs mounted over the sandbox's store directory (needs root;
//! skipped with a message otherwise, unless `DMP_REQUIRE_SERVERS` is set).
//!
//! - A file six times the size of the store, with a quota that fits,
//!   arrives byte-identical.
//! - A store that another file has filled: the sender waits (it cannot
//!   write a chunk) or fails with one clear line; the receiver's partial
//!   file is always a prefix of the source; once space frees up, the
//!   transfer completes byte-identical (the sender re-run if it had given up).

use dmp_testkit::{Proc, Sandbox, TIMEOUT, entries, file_len, files_under, random_file, sha256_file, wait_until};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const STORE_MIB: u64 = 8;

/// A tmpfs of `STORE_MIB` MiB mounted on a directory; unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (the test is skipped) when mounting is not possible here.
    fn mount(test: &str, dir: &Path) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={STORE_MIB}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { dir: dir.to_path_buf() }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        let required = std::env::var("DMP_REQUIRE_SERVERS").is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(!required, "{test}: cannot mount a tmpfs ({why}) and DMP_REQUIRE_SERVERS is set (run as root)");
        eprintln!("SKIPPED {test}: cannot mount a tmpfs as the store ({why}); run as root to test a full store");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.dir).status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn send_args(sb: &Sandbox, src: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> =
        vec!["bob".into(), "alice".into(), src.into(), "--store".into(), sb.store.clone().into()];
    v.extend(extra.iter().map(OsString::from));
    v
}

fn recv_args(sb: &Sandbox, dir: &Path) -> Vec<OsString> {
    vec!["alice".into(), "bob".into(), dir.into(), "--store".into(), sb.store.clone().into()]
}

fn part_file(dir: &Path) -> Option<PathBuf> {
    dmp_testkit::find_file(dir, |n| n.starts_with(".dftp-") && n.ends_with(".part"))
}

/// The partial file (if any) holds a prefix of the source, zeros after the
/// bytes written (it may be sparse): never a byte that was not sent.
#[track_caller]
fn assert_part_is_prefix_of(dir: &Path, src: &[u8]) -> u64 {
    let Some(p) = part_file(dir) else { return 0 };
    let mut part = Vec::new();
    std::fs::File::open(&p).and_then(|mut f| f.read_to_end(&mut part)).expect("read the partial file");
    assert!(part.len() <= src.len(), "the partial file is longer than the source");
    let same = part.iter().zip(src).take_while(|(a, b)| a == b).count();
    assert!(part[same..].iter().all(|b| *b == 0), "the partial file holds bytes that were not sent (at {same})");
    same as u64
}

fn store_used(sb: &Sandbox) -> u64 {
    files_under(&sb.store).iter().filter_map(|p| file_len(p)).sum()
}

#[test]
fn a_file_six_times_the_store_arrives_with_a_quota_that_fits() {
    let test = "a_file_six_times_the_store_arrives_with_a_quota_that_fits";
    let sb = Sandbox::new();
    let Some(_tmpfs) = Tmpfs::mount(test, &sb.store) else { return };
    let seed = dmp_testkit::seed(test);
    let size = 6 * STORE_MIB * MIB;
    let src = sb.mkdir("src").join("big.bin");
    random_file(&src, size, seed);
    let dir = sb.mkdir("dl");
    let started = Instant::now();
    let recv = sb.spawn("dftp-receive", recv_args(&sb, &dir));
    let send = sb.run("dftp-send", send_args(&sb, &src, &["-b", "1m", "--quota", "4m", "-q"]));
    let r = recv.wait();
    send.expect_ok();
    r.expect_ok();
    assert_eq!(entries(&dir), vec!["big.bin".to_owned()]);
    assert_eq!(sha256_file(&dir.join("big.bin")), sha256_file(&src), "SHA-256 of what arrived");
    eprintln!("{test}: {} MiB through a {STORE_MIB} MiB store in {:.1} s", size / MIB, started.elapsed().as_secs_f64());
}

#[test]
fn a_full_store_makes_the_sender_wait_or_fail_clearly_and_nothing_is_corrupt() {
    let test = "a_full_store_makes_the_sender_wait_or_fail_clearly_and_nothing_is_corrupt";
    // The receiver is paused once the first chunk is acknowledged. On a
    // busy machine the test may see that too late, with the transfer (a
    // fraction of a second) nearly done: then the scenario did not happen
    // and is set up again, rather than passing or failing by luck.
    for attempt in 0..3 {
        match full_store_attempt(test, attempt) {
            Attempt::Done => return,
            Attempt::TooLate(at) => eprintln!(
                "{test}: attempt {}: {at} bytes had arrived before the receiver stopped; setting up again",
                attempt + 1
            ),
            Attempt::Skipped => return,
        }
    }
    panic!("{test}: in 3 attempts the transfer always got too far before the receiver could be paused");
}

enum Attempt {
    Done,
    /// The receiver had this many bytes before it could be paused.
    TooLate(u64),
    Skipped,
}

fn full_store_attempt(test: &str, attempt: u64) -> Attempt {
    let sb = Sandbox::new();
    let Some(_tmpfs) = Tmpfs::mount(test, &sb.store) else { return Attempt::Skipped };
    let seed = dmp_testkit::seed(test).wrapping_add(attempt);
    let size = 24 * MIB;
    let quota = 4 * MIB;
    let src = sb.mkdir("src").join("big.bin");
    random_file(&src, size, seed);
    let src_bytes = std::fs::read(&src).expect("source");
    let dir = sb.mkdir("dl");
    let send_extra = ["-b", "1m", "--quota", "4m"];

    let mut recv = sb.spawn("dftp-receive", recv_args(&sb, &dir));
    let mut send: Proc = sb.spawn("dftp-send", send_args(&sb, &src, &send_extra));
    // Once the first chunk has been acknowledged (the sender, whose quota
    // holds 4 chunks, has staged the 5th), pause the receiver and fill the
    // store to the brim with someone else's file (written in small pieces
    // until ENOSPC).
    let fifth_chunk_staged = || {
        files_under(&sb.store).iter().any(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".chunk") && n.split('-').next().and_then(|i| i.parse::<u64>().ok()).is_some_and(|i| i >= 4)
        })
    };
    wait_until(TIMEOUT, "the transfer to start", || {
        fifth_chunk_staged() || !entries(&dir).iter().all(|n| n.ends_with(".part"))
    });
    let paused = recv.pause();
    let at_pause = assert_part_is_prefix_of(&dir, &src_bytes);
    // What is staged in the store may still arrive after the pause.
    if !paused || part_file(&dir).is_none() || at_pause + quota >= size {
        let _ = send.kill();
        let _ = recv.kill();
        return Attempt::TooLate(if part_file(&dir).is_none() { size } else { at_pause });
    }
    let filler = sb.store.join("someone-elses-file.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0x5au8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    eprintln!(
        "{test}: the store is full: {} bytes used of {STORE_MIB} MiB; {at_pause} bytes had arrived",
        store_used(&sb)
    );
    recv.signal("CONT");

    // For a while, the transfer cannot go on: the sender waits (and says
    // it is retrying) or gives up with one clear line. Nothing corrupt.
    let full_since = Instant::now();
    let mut gave_up = None;
    while full_since.elapsed() < Duration::from_secs(4) {
        assert_part_is_prefix_of(&dir, &src_bytes);
        if let Some(f) = send.try_finish() {
            gave_up = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let at = assert_part_is_prefix_of(&dir, &src_bytes);
    if gave_up.as_ref().is_some_and(|f| f.code == Some(0)) {
        // The sender was waiting for acknowledgements, not writing, when the
        // store filled up: each chunk acknowledged after that freed the room
        // for the next, and it never met the full store. The scenario did
        // not happen: set it up again.
        let _ = recv.kill();
        return Attempt::TooLate(at);
    }
    match &gave_up {
        Some(f) => {
            assert!(f.code == Some(1) || f.code == Some(2), "{}", f.describe());
            let errors: Vec<&str> = f.stderr_lines().into_iter().filter(|l| l.starts_with("error")).collect();
            assert_eq!(errors.len(), 1, "one clear line\n{}", f.describe());
            eprintln!("{test}: the sender gave up at {at} bytes received: {}", errors[0]);
        }
        None => {
            let said = send.stderr_so_far() + &recv.stderr_so_far();
            assert!(said.contains("the store is full"), "neither side says the store is full:\n{said}");
            // Regression: log lines on a pipe or in a file carried ANSI colour codes.
            assert!(!said.contains('\u{1b}'), "escape sequences in logs written to a file:\n{said:?}");
            let last = |s: String| s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("(nothing)").to_owned();
            eprintln!(
                "{test}: the sender waits at {at} bytes received; its last line: {}; the receiver's: {}",
                last(send.stderr_so_far()),
                last(recv.stderr_so_far())
            );
        }
    }
    assert!(at < size, "the transfer had finished before the store filled; the test needs a bigger file");

    // Space frees up: the transfer completes (re-run the sender if it gave up).
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed = Instant::now();
    let snd = match gave_up {
        Some(_) => sb.run("dftp-send", send_args(&sb, &src, &send_extra)),
        None => send.wait(),
    };
    let r = recv.wait();
    snd.expect_ok();
    r.expect_ok();
    eprintln!("{test}: done {:.1} s after the store had room again", freed.elapsed().as_secs_f64());
    assert_eq!(entries(&dir), vec!["big.bin".to_owned()]);
    assert_eq!(sha256_file(&dir.join("big.bin")), sha256_file(&src), "SHA-256 of what arrived");
    let left: Vec<PathBuf> = files_under(&sb.store)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".msg") || n.ends_with(".chunk") || n == "head" || n == "ack" || n.ends_with(".tmp")
        })
        .collect();
    assert!(left.is_empty(), "files left in the store: {left:?}");
    Attempt::Done
}
