//! End-to-end tests of dftp-send and dftp-receive: the real binaries over a
//! temporary folder store, each test in its own sandbox (store, state
//! directory, logs), comparing SHA-256 of what arrived.
//!
//! The sender is "alice", the receiver "bob": alice writes `<store>/alice/bob/`,
//! bob writes `<store>/bob/alice/`.

use dmp_core::PeerId;
use dmp_core::crypto::{INFO_MSG, Identity, PeerCrypto, PublicKey, os_rng};
use dmp_core::keys::{KEY_FILE, key_file_body, load_or_create_identity, parse_key_file};
use dmp_core::proto::dftp_msg::{Offer, Reply};
use dmp_core::proto::mailbox::{msg_name, parse_msg_name};
use dmp_core::wire::{Envelope, FLAG_ENCRYPTED, Kind};
use dmp_testkit::{
    Finished, Proc, Sampler, Sandbox, TIMEOUT, entries, file_len, files_under, random_file, sha256_file, wait_until,
};
use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SENDER: &str = "alice";
const RECEIVER: &str = "bob";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// How long the second party starts after the first.
const HEAD_START: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// Helpers

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// `dftp-send bob alice FILE --store STORE EXTRA...`
fn send_args(sb: &Sandbox, file: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v = args(&[&RECEIVER, &SENDER, &file, &"--store", &sb.store]);
    v.extend(extra.iter().map(OsString::from));
    v
}

/// `dftp-receive alice bob DIR --store STORE EXTRA...`
fn recv_args(sb: &Sandbox, dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v = args(&[&SENDER, &RECEIVER, &dir, &"--store", &sb.store]);
    v.extend(extra.iter().map(OsString::from));
    v
}

fn spawn_send(sb: &Sandbox, file: &Path, extra: &[&str]) -> Proc {
    sb.spawn("dftp-send", send_args(sb, file, extra))
}

fn spawn_recv(sb: &Sandbox, dir: &Path, extra: &[&str]) -> Proc {
    sb.spawn("dftp-receive", recv_args(sb, dir, extra))
}

/// A sandbox with a random source file `src/<name>` of `size` bytes and an
/// empty download directory `dl/`.
struct Setup {
    sb: Sandbox,
    src: PathBuf,
    dir: PathBuf,
    sha: String,
    size: u64,
}

fn setup(test: &str, name: &str, size: u64) -> Setup {
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join(name);
    random_file(&src, size, dmp_testkit::seed(test));
    let dir = sb.mkdir("dl");
    let sha = sha256_file(&src);
    Setup { sb, src, dir, sha, size }
}

impl Setup {
    fn received(&self) -> PathBuf {
        self.dir.join(self.src.file_name().expect("name"))
    }

    /// DIR holds exactly the received file, byte-identical to the source.
    #[track_caller]
    fn assert_received(&self) {
        let name = self.src.file_name().expect("name").to_string_lossy().into_owned();
        assert_eq!(entries(&self.dir), vec![name], "DIR must hold the received file and nothing else");
        assert_eq!(file_len(&self.received()), Some(self.size), "received size");
        assert_eq!(sha256_file(&self.received()), self.sha, "received SHA-256");
    }

    /// The store holds no file of the transfer, and no resume state is left.
    #[track_caller]
    fn assert_clean(&self) {
        assert_store_clean(&self.sb);
        assert_eq!(files_under(&self.sb.state), Vec::<PathBuf>::new(), "state files left after success");
    }

    /// [`Setup::assert_clean`] after a SIGKILL: temporary files of writes
    /// the kill cut short (`.~dmp-*.tmp`) are swept when the outbox is
    /// cleaned, so the store must be just as clean.
    #[track_caller]
    fn assert_clean_after_crash(&self) {
        self.assert_clean();
    }

    /// The temporary file of the transfer in DIR, if any.
    fn part_file(&self) -> Option<PathBuf> {
        part_file(&self.dir)
    }

    fn part_len(&self) -> u64 {
        self.part_file().and_then(|p| file_len(&p)).unwrap_or(0)
    }
}

fn part_file(dir: &Path) -> Option<PathBuf> {
    dmp_testkit::find_file(dir, |n| n.starts_with(".dftp-") && n.ends_with(".part"))
}

#[track_caller]
fn assert_store_clean(sb: &Sandbox) {
    for (a, b) in [(SENDER, RECEIVER), (RECEIVER, SENDER)] {
        let left = files_under(&sb.outbox(a, b));
        assert!(left.is_empty(), "files left in the store under {a}/{b}: {left:?}");
    }
}

/// The single JSON object a tool printed on stdout.
#[track_caller]
fn json(f: &Finished) -> serde_json::Value {
    let lines: Vec<&str> = f.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "--json prints one line\n{}", f.describe());
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", f.describe()))
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is not an integer in {v}"))
}

/// Freezes a running process, checks it has not finished, then kills it
/// with SIGKILL: a crash at an arbitrary point of the transfer.
#[track_caller]
fn crash(mut p: Proc) {
    p.signal("STOP");
    if let Some(f) = p.try_finish() {
        panic!("{} finished before it could be killed; the test needs a bigger file\n{}", f.label, f.describe());
    }
    let f = p.kill();
    assert_eq!(f.signal, Some(9), "{}", f.describe());
}

/// Runs a whole transfer of a random file of `size` bytes with `send_extra`
/// flags, one side starting [`HEAD_START`] before the other, and checks the
/// result, the JSON reports and the cleanup.
fn round_trip(test: &str, size: u64, send_extra: &[&str], sender_first: bool) {
    round_trip_with(test, size, send_extra, &[], sender_first)
}

fn round_trip_with(test: &str, size: u64, send_extra: &[&str], recv_extra: &[&str], sender_first: bool) {
    let s = setup(test, "data.bin", size);
    let mut send_extra = send_extra.to_vec();
    send_extra.push("--json");
    let mut recv_extra = recv_extra.to_vec();
    recv_extra.push("--json");
    let (send, recv) = if sender_first {
        let send = spawn_send(&s.sb, &s.src, &send_extra);
        std::thread::sleep(HEAD_START);
        (send, spawn_recv(&s.sb, &s.dir, &recv_extra))
    } else {
        let recv = spawn_recv(&s.sb, &s.dir, &recv_extra);
        std::thread::sleep(HEAD_START);
        (spawn_send(&s.sb, &s.src, &send_extra), recv)
    };
    let r = recv.wait();
    let snd = send.wait();
    r.expect_ok();
    snd.expect_ok();
    s.assert_received();
    s.assert_clean();

    let sj = json(&snd);
    for key in ["file", "bytes", "seconds", "mb_per_s", "sha256"] {
        assert!(sj.get(key).is_some(), "sender JSON lacks {key}: {sj}");
    }
    assert_eq!(sj["file"], "data.bin");
    assert_eq!(num(&sj, "bytes"), size);
    assert_eq!(sj["sha256"], s.sha.as_str());
    let rj = json(&r);
    for key in ["file", "path", "bytes", "seconds", "mb_per_s", "sha256"] {
        assert!(rj.get(key).is_some(), "receiver JSON lacks {key}: {rj}");
    }
    assert_eq!(rj["file"], "data.bin");
    assert_eq!(num(&rj, "bytes"), size);
    assert_eq!((num(&rj, "resumed_bytes"), num(&rj, "written_bytes")), (0, size), "a fresh run writes it all: {rj}");
    assert_eq!(rj["sha256"], s.sha.as_str());
    let path = PathBuf::from(rj["path"].as_str().expect("path is a string"));
    assert_eq!(path.canonicalize().ok(), s.received().canonicalize().ok(), "receiver JSON path");
}

// ---------------------------------------------------------------------------
// Sizes around the block size, and who starts first

const BLOCK: u64 = 64 * KIB;

#[test]
fn size_0() {
    round_trip("size_0", 0, &["-b", "64k"], false);
}

#[test]
fn size_1() {
    round_trip("size_1", 1, &["-b", "64k"], false);
}

#[test]
fn size_block_minus_1() {
    round_trip("size_block_minus_1", BLOCK - 1, &["-b", "64k"], false);
}

#[test]
fn size_block() {
    round_trip("size_block", BLOCK, &["-b", "64k"], false);
}

#[test]
fn size_block_plus_1() {
    round_trip("size_block_plus_1", BLOCK + 1, &["-b", "64k"], false);
}

#[test]
fn size_10_blocks_plus_3_receiver_first() {
    round_trip("size_10_blocks_plus_3_receiver_first", 10 * BLOCK + 3, &["-b", "64k"], false);
}

#[test]
fn size_10_blocks_plus_3_sender_first() {
    round_trip("size_10_blocks_plus_3_sender_first", 10 * BLOCK + 3, &["-b", "64k"], true);
}

#[test]
fn empty_file_sender_first() {
    round_trip("empty_file_sender_first", 0, &["-b", "64k"], true);
}

#[test]
fn insecure_plaintext_on_both_sides() {
    let plain = ["-b", "64k", "--insecure-plaintext"];
    round_trip_with("insecure_plaintext_on_both_sides", 10 * BLOCK + 3, &plain, &["--insecure-plaintext"], false);
}

// ---------------------------------------------------------------------------
// The staged bytes never exceed min(quota, window × block)

/// Sends 8 MiB while sampling the chunk objects in the sender's outbox.
/// The receiver is frozen for a moment once chunks flow, so that the sender
/// runs into its limit.
fn quota_case(test: &str, send_extra: &[&str], limit: u64) {
    let s = setup(test, "big.bin", 8 * MIB);
    let sampler = Sampler::start(s.sb.outbox(SENDER, RECEIVER), ".chunk", Duration::from_millis(2));
    let send = spawn_send(&s.sb, &s.src, send_extra);
    let mut recv = spawn_recv(&s.sb, &s.dir, &[]);
    let outbox = s.sb.outbox(SENDER, RECEIVER);
    wait_until(TIMEOUT, "the first chunk object", || {
        entries(&outbox).iter().any(|n| n.ends_with(".chunk")) || s.part_len() > 0
    });
    recv.signal("STOP");
    std::thread::sleep(Duration::from_millis(500));
    recv.signal("CONT");
    recv.wait().expect_ok();
    send.wait().expect_ok();
    let seen = sampler.finish();
    eprintln!("{test}: {seen:?}, limit {limit}");
    assert!(seen.nonempty > 0 && seen.max_bytes > 0, "the sampler never saw a chunk: {seen:?}");
    assert!(seen.max_bytes <= limit, "{} bytes of chunks staged at once, limit {limit}", seen.max_bytes);
    s.assert_received();
    s.assert_clean();
}

/// The window counts chunk objects: four encrypted 64 KiB chunks, each
/// with its 60-byte seal.
#[test]
fn window_bounds_staged_bytes() {
    quota_case("window_bounds_staged_bytes", &["-b", "64k", "--window", "4"], 4 * (64 * KIB + 60));
}

#[test]
fn quota_bounds_staged_bytes() {
    quota_case("quota_bounds_staged_bytes", &["-b", "64k", "--quota", "128k"], 128 * KIB);
}

/// Three encrypted 64 KiB chunk objects are a little more than 192 KiB:
/// the quota counts the bytes in the store, so at most two are staged.
#[test]
fn quota_counts_stored_bytes() {
    quota_case("quota_counts_stored_bytes", &["-b", "64k", "--quota", "192k"], 192 * KIB);
}

/// A window of one lets one chunk object at a time through.
#[test]
fn window_1_sends_one_chunk_at_a_time() {
    let s = setup("window_1_sends_one_chunk_at_a_time", "data.bin", 20 * BLOCK + 5);
    let sampler = Sampler::start(s.sb.outbox(SENDER, RECEIVER), ".chunk", Duration::from_millis(2));
    let send = spawn_send(&s.sb, &s.src, &["-b", "64k", "--window", "1", "--timeout", "30"]);
    spawn_recv(&s.sb, &s.dir, &["--timeout", "30"]).wait().expect_ok();
    send.wait().expect_ok();
    let seen = sampler.finish();
    assert!(seen.max_files <= 1, "more than one chunk staged at once: {seen:?}");
    s.assert_received();
    s.assert_clean();
}

// ---------------------------------------------------------------------------
// Crashes and restarts

const CRASH_SIZE: u64 = 32 * MIB;
const CRASH_AT: u64 = 8 * MIB;

/// Waits until the receiver's temporary file holds at least `at` bytes.
fn wait_part(s: &Setup, at: u64) {
    wait_until(TIMEOUT, "the partial file to grow", || s.part_len() >= at);
}

/// After a crash the store may hold chunks and messages, but nothing is
/// half-written under a final name, and DIR holds only the partial file.
#[track_caller]
fn assert_only_part_file(s: &Setup) {
    let part = s.part_file().expect("a partial file after the crash");
    let name = part.file_name().expect("name").to_string_lossy().into_owned();
    assert_eq!(entries(&s.dir), vec![name], "DIR after the crash");
}

#[test]
fn receiver_killed_and_restarted() {
    let s = setup("receiver_killed_and_restarted", "big.bin", CRASH_SIZE);
    let send = spawn_send(&s.sb, &s.src, &["-b", "256k"]);
    let recv = spawn_recv(&s.sb, &s.dir, &["--json"]);
    wait_part(&s, CRASH_AT);
    crash(recv);
    assert_only_part_file(&s);
    let r = spawn_recv(&s.sb, &s.dir, &["--json"]).wait();
    r.expect_ok();
    send.wait().expect_ok();
    s.assert_received();
    s.assert_clean_after_crash();
    let j = json(&r);
    let (written, resumed) = (num(&j, "written_bytes"), num(&j, "resumed_bytes"));
    assert!(written < CRASH_SIZE, "the restarted receiver wrote {written} bytes: the whole file again");
    assert!(resumed > CRASH_AT / 2, "the restarted receiver counts the bytes written before: {j}");
    assert_eq!(resumed + written, CRASH_SIZE, "{j}");
    // The rate counts this run's bytes and time only.
    let rate = written as f64 / MIB as f64 / j["seconds"].as_f64().expect("seconds");
    let reported = j["mb_per_s"].as_f64().expect("mb_per_s");
    assert!((reported - rate).abs() <= rate * 1e-6, "mb_per_s {reported}, this run's rate {rate}: {j}");
}

#[test]
fn sender_killed_and_restarted() {
    let s = setup("sender_killed_and_restarted", "big.bin", CRASH_SIZE);
    let send = spawn_send(&s.sb, &s.src, &["-b", "256k", "--json"]);
    let recv = spawn_recv(&s.sb, &s.dir, &[]);
    wait_part(&s, CRASH_AT);
    crash(send);
    let snd = spawn_send(&s.sb, &s.src, &["-b", "256k", "--json"]).wait();
    snd.expect_ok();
    recv.wait().expect_ok();
    s.assert_received();
    s.assert_clean_after_crash();
    let j = json(&snd);
    let (resumed, sent) = (num(&j, "resumed_bytes"), num(&j, "sent_bytes"));
    assert!(resumed > 0, "the restarted sender did not resume: {j}");
    assert!(sent < CRASH_SIZE, "the restarted sender sent the whole file again: {j}");
}

#[test]
fn both_killed_and_restarted() {
    let s = setup("both_killed_and_restarted", "big.bin", CRASH_SIZE);
    let send = spawn_send(&s.sb, &s.src, &["-b", "256k", "--json"]);
    let recv = spawn_recv(&s.sb, &s.dir, &["--json"]);
    wait_part(&s, CRASH_AT);
    let (mut send, mut recv) = (send, recv);
    send.signal("STOP");
    recv.signal("STOP");
    crash(send);
    crash(recv);
    assert_only_part_file(&s);
    let recv = spawn_recv(&s.sb, &s.dir, &["--json"]);
    let snd = spawn_send(&s.sb, &s.src, &["-b", "256k", "--json"]).wait();
    let r = recv.wait();
    snd.expect_ok();
    r.expect_ok();
    s.assert_received();
    s.assert_clean_after_crash();
    let j = json(&snd);
    assert!(num(&j, "resumed_bytes") > 0, "the restarted sender did not resume: {j}");
    assert!(num(&j, "sent_bytes") < CRASH_SIZE, "the restarted sender sent the whole file again: {j}");
    let written = num(&json(&r), "written_bytes");
    assert!(written < CRASH_SIZE, "the restarted receiver wrote {written} bytes: the whole file again");
}

#[test]
fn ctrl_c_then_rerun_completes() {
    let s = setup("ctrl_c_then_rerun_completes", "big.bin", CRASH_SIZE);
    let send = spawn_send(&s.sb, &s.src, &["-b", "256k"]);
    let mut recv = spawn_recv(&s.sb, &s.dir, &[]);
    wait_part(&s, CRASH_AT / 2);
    recv.signal("INT");
    let f = recv.wait();
    f.expect_code(130);
    assert!(f.stderr.contains("interrupted"), "{}", f.describe());
    assert_only_part_file(&s);
    spawn_recv(&s.sb, &s.dir, &[]).wait().expect_ok();
    send.wait().expect_ok();
    s.assert_received();
    s.assert_clean();
}

// ---------------------------------------------------------------------------
// A chunk altered in the store is never written

#[test]
fn altered_chunk_is_never_written() {
    let s = setup("altered_chunk_is_never_written", "data.bin", 4 * MIB);
    let send = spawn_send(&s.sb, &s.src, &["--window", "8", "-b", "64k"]);
    let recv = spawn_recv(&s.sb, &s.dir, &[]);
    let outbox = s.sb.outbox(SENDER, RECEIVER);
    let chunks = || -> Vec<(u64, PathBuf)> {
        entries(&outbox)
            .into_iter()
            .filter_map(|n| {
                let (idx, _) = dmp_core::proto::dftp_msg::parse_chunk_object_name(&n)?;
                Some((idx, outbox.join(n)))
            })
            .collect()
    };
    // The sender publishes only once the offer is accepted: let the
    // receiver accept, then kill it, so that chunks stay in the store.
    wait_until(TIMEOUT, "the first chunk object", || !chunks().is_empty());
    crash(recv);
    let written = s.part_len();
    let unwritten = || chunks().into_iter().filter(|(i, _)| i * BLOCK >= written).min_by_key(|(i, _)| *i);
    wait_until(TIMEOUT, "a chunk object the receiver has not written", || unwritten().is_some());
    let (index, victim) = unwritten().expect("present");
    let offset = index * BLOCK;

    // Flip one byte in place: same name, same length, wrong content.
    let original = std::fs::read(&victim).expect("read chunk");
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let f = std::fs::OpenOptions::new().write(true).open(&victim).expect("open chunk");
    f.write_all_at(&bad, 0).expect("alter chunk");
    drop(f);

    // The restarted receiver writes everything before the altered chunk,
    // then nothing more while it stays altered (it keeps retrying).
    let mut recv = spawn_recv(&s.sb, &s.dir, &[]);
    wait_until(TIMEOUT, "the receiver to reach the altered chunk", || s.part_len() >= offset);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(s.part_len(), offset, "the receiver wrote past the start of altered chunk {index}");
        if let Some(f) = recv.try_finish() {
            panic!("the receiver gave up on an altered chunk at once\n{}", f.describe());
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // One warning, naming the object in the store, at its 5th failure.
    let key = format!("alice/bob/{}", victim.file_name().expect("name").to_string_lossy());
    let warned: Vec<String> =
        recv.stderr_so_far().lines().filter(|l| l.contains("WARN") && l.contains(&key)).map(str::to_owned).collect();
    assert_eq!(warned.len(), 1, "one warning for chunk {index}: {warned:?}\n{}", recv.stderr_so_far());
    assert!(warned[0].contains("failed verification 5 times"), "{}", warned[0]);

    // Repaired in place (as a late sync would), the transfer completes.
    let f = std::fs::OpenOptions::new().write(true).open(&victim).expect("open chunk");
    f.write_all_at(&original, 0).expect("restore chunk");
    drop(f);
    recv.wait().expect_ok();
    send.wait().expect_ok();
    s.assert_received();
    s.assert_clean_after_crash();
}

// ---------------------------------------------------------------------------
// Playing a party by hand

fn peer(s: &str) -> PeerId {
    PeerId::new(s).expect("valid id")
}

/// `id`'s key in the sandbox's config directory (the one its tools use),
/// created if needed.
fn identity(sb: &Sandbox, id: &str) -> Identity {
    load_or_create_identity(&sb.config, &peer(id)).expect("identity").0
}

/// Writes `dir/name` under a temporary name, then renames it into place.
fn put_file(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("directory");
    let tmp = dir.join(format!(".~test-{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// Publishes `id`'s public key in the store, as its tools do.
fn publish_key(sb: &Sandbox, id: &str, key: &PublicKey) {
    put_file(&sb.store.join(id), KEY_FILE, &key_file_body(&peer(id), key));
}

/// The public key `id` published in the store, once there.
fn published_key(sb: &Sandbox, id: &str) -> Option<PublicKey> {
    let bytes = std::fs::read(sb.store.join(id).join(KEY_FILE)).ok()?;
    parse_key_file(&peer(id), &bytes).ok()
}

/// Seals `env` as a secure link does (`None`: plaintext) and encodes it.
fn seal(crypto: Option<&PeerCrypto>, mut env: Envelope) -> Vec<u8> {
    if let Some(c) = crypto {
        env.flags |= FLAG_ENCRYPTED;
        env.payload = c.seal(INFO_MSG, &env.aad(), &env.payload);
    }
    env.encode()
}

/// The messages in `from`'s outbox to `to` that decode and open.
fn messages(sb: &Sandbox, from: &str, to: &str, crypto: Option<&PeerCrypto>) -> Vec<Envelope> {
    let dir = sb.outbox(from, to);
    entries(&dir)
        .into_iter()
        .filter(|n| parse_msg_name(n).is_some())
        .filter_map(|n| std::fs::read(dir.join(n)).ok())
        .filter_map(|b| {
            let mut env = Envelope::decode(&b, Some(&peer(to))).ok()?;
            if env.flags & FLAG_ENCRYPTED != 0 {
                env.payload = crypto?.open(INFO_MSG, &env.aad(), &env.payload).ok()?;
            }
            Some(env)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Hostile names in a crafted offer

const CRAFTED_TRANSFER: &str = "00000000000000aa";

/// Plays alice: writes her head and an offer of `name` (sealed with `crypto`).
fn craft_offer(sb: &Sandbox, name: &str, crypto: Option<&PeerCrypto>) {
    let session = 0x0123_4567_89ab_cdef_u64;
    let env = |kind, seq, payload| Envelope {
        flags: 0,
        kind,
        sender: peer(SENDER),
        recipient: peer(RECEIVER),
        session,
        seq,
        base: 1,
        payload,
    };
    let offer = Offer { transfer: CRAFTED_TRANSFER.into(), name: name.into(), size: 10, block_size: 1024 };
    let body = serde_json::to_vec(&offer).expect("json");
    let dir = sb.outbox(SENDER, RECEIVER);
    put_file(&dir, &msg_name(session, 1), &seal(crypto, env(Kind::Offer, 1, body)));
    put_file(&dir, "head", &seal(crypto, env(Kind::Head, 0, Vec::new())));
}

/// A receiver offered `name` by an authenticated (or, with `secure` false,
/// plaintext) but hostile sender refuses it, tells the sender, says so in
/// one line and creates nothing anywhere.
fn hostile_name(test: &str, name: &str, secure: bool) {
    eprintln!("{test}: offering {name:?}");
    let sb = Sandbox::new();
    let outer = sb.mkdir("outer");
    let dir = sb.mkdir("outer/dl");
    let etc_x_before = Path::new("/etc/x").exists();
    let crypto = secure.then(|| {
        let alice = identity(&sb, SENDER);
        let bob = identity(&sb, RECEIVER);
        publish_key(&sb, SENDER, alice.public());
        PeerCrypto::new(alice, bob.public().clone(), os_rng())
    });
    craft_offer(&sb, name, crypto.as_ref());
    let extra: &[&str] = if secure { &["-q"] } else { &["-q", "--insecure-plaintext"] };
    let recv = spawn_recv(&sb, &dir, extra);

    // The receiver answers with a refusal that names the problem.
    let mut refusal = None;
    wait_until(TIMEOUT, "a Refuse message in bob's outbox", || {
        refusal = messages(&sb, RECEIVER, SENDER, crypto.as_ref()).into_iter().find(|e| e.kind == Kind::Refuse);
        refusal.is_some()
    });
    let reply: Reply = serde_json::from_slice(&refusal.expect("found").payload).expect("reply JSON");
    assert_eq!(reply.transfer, CRAFTED_TRANSFER);
    let reason = reply.reason.unwrap_or_default();
    assert!(reason.contains("name"), "refusal reason: {reason:?}");

    // The fake sender reads it and cleans up, as a real one does.
    for f in files_under(&sb.outbox(SENDER, RECEIVER)) {
        std::fs::remove_file(f).expect("remove");
    }
    let f = recv.wait();
    f.expect_code(1);
    let errors: Vec<&str> = f.stderr_lines().into_iter().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one line of error\n{}", f.describe());
    assert!(errors[0].contains(&format!("{name:?}")), "the error names {name:?} escaped\n{}", f.describe());
    assert!(!f.stderr.chars().any(|c| c.is_control() && c != '\n'), "control characters on stderr\n{f:?}");

    assert_eq!(entries(&dir), Vec::<String>::new(), "nothing may be created in DIR");
    assert_eq!(entries(&outer), vec!["dl".to_owned()], "nothing may be created next to DIR");
    assert_eq!(
        entries(sb.root()),
        ["config", "logs", "outer", "state", "store"].map(String::from).to_vec(),
        "nothing may be created in the sandbox"
    );
    if !etc_x_before {
        assert!(!Path::new("/etc/x").exists(), "/etc/x was created");
    }
    assert_store_clean(&sb);
}

/// The receiver's own partial-file name: storing it would remove it.
#[test]
fn hostile_name_own_partial_file() {
    hostile_name("hostile_name_own_partial_file", &format!(".dftp-{CRAFTED_TRANSFER}.part"), true);
}

#[test]
fn hostile_name_parent_path() {
    hostile_name("hostile_name_parent_path", "../x", true);
}

#[test]
fn hostile_name_absolute_path() {
    hostile_name("hostile_name_absolute_path", "/etc/x", true);
}

#[test]
fn hostile_name_separator() {
    hostile_name("hostile_name_separator", "a/b", true);
}

#[test]
fn hostile_name_dot_dot() {
    hostile_name("hostile_name_dot_dot", "..", true);
}

#[test]
fn hostile_name_ansi_escape() {
    hostile_name("hostile_name_ansi_escape", "red\u{1b}[31malert", true);
}

#[test]
fn hostile_name_newline() {
    hostile_name("hostile_name_newline", "two\nlines", true);
}

#[test]
fn hostile_name_plaintext_mode() {
    hostile_name("hostile_name_plaintext_mode", "../x", false);
}

// ---------------------------------------------------------------------------
// An existing file

#[test]
fn existing_file_refused_then_overwritten() {
    let s = setup("existing_file_refused_then_overwritten", "data.bin", 100 * KIB);
    let old = b"the file that was here first\n";
    std::fs::write(s.received(), old).expect("existing file");

    let send = spawn_send(&s.sb, &s.src, &["-b", "64k"]);
    let r = spawn_recv(&s.sb, &s.dir, &[]).wait();
    let snd = send.wait();
    r.expect_code(1);
    snd.expect_code(1);
    assert!(
        snd.stderr.contains("already exists") && snd.stderr.contains("refused"),
        "the sender says why\n{}",
        snd.describe()
    );
    assert!(r.stderr.contains("already exists"), "{}", r.describe());
    assert_eq!(std::fs::read(s.received()).expect("existing file"), old, "the existing file was touched");
    assert_eq!(entries(&s.dir), vec!["data.bin".to_owned()]);
    assert_store_clean(&s.sb);

    let send = spawn_send(&s.sb, &s.src, &["-b", "64k"]);
    spawn_recv(&s.sb, &s.dir, &["--overwrite"]).wait().expect_ok();
    send.wait().expect_ok();
    s.assert_received();
    s.assert_clean();
}

// ---------------------------------------------------------------------------
// Block size spellings

#[test]
fn block_size_spellings() {
    for spelling in
        [&["-bs", "1k"][..], &["--block-size", "1k"], &["-b", "1K"], &["-b", "1KiB"], &["-bs=1k"], &["-bs1k"]]
    {
        eprintln!("block_size_spellings: {spelling:?}");
        let s = setup("block_size_spellings", "small.bin", 5 * KIB + 7);
        // Bob's key is known beforehand, so alice offers before bob runs.
        let bob = identity(&s.sb, RECEIVER);
        publish_key(&s.sb, RECEIVER, bob.public());
        let send = spawn_send(&s.sb, &s.src, spelling);
        let mut alice = None;
        wait_until(TIMEOUT, "alice's published key", || {
            alice = published_key(&s.sb, SENDER);
            alice.is_some()
        });
        let crypto = PeerCrypto::new(bob, alice.expect("key"), os_rng());
        let mut offer: Option<Offer> = None;
        wait_until(TIMEOUT, "the offer", || {
            offer = messages(&s.sb, SENDER, RECEIVER, Some(&crypto))
                .into_iter()
                .find(|e| e.kind == Kind::Offer)
                .and_then(|e| serde_json::from_slice(&e.payload).ok());
            offer.is_some()
        });
        assert_eq!(offer.expect("offer").block_size, 1024, "block size offered for {spelling:?}");
        spawn_recv(&s.sb, &s.dir, &[]).wait().expect_ok();
        send.wait().expect_ok();
        s.assert_received();
        s.assert_clean();
    }
}

/// The same transfer started twice at once on one machine: the second of
/// each tool stops at once with one line and exit code 2, and the first
/// ones then complete the transfer (before, the second waited for ever, and
/// the state it left could wedge later runs).
#[test]
fn a_second_run_of_the_same_link_is_refused_at_once() {
    let s = setup("a_second_run_of_the_same_link_is_refused_at_once", "data.bin", 300 * KIB);
    let sb = &s.sb;
    let mut recv = spawn_recv(sb, &s.dir, &[]);
    wait_until(TIMEOUT, "the receiver's lock", || {
        files_under(&sb.state).iter().any(|p| p.to_string_lossy().ends_with(".lock"))
    });
    let again = sb.spawn("dftp-receive", recv_args(sb, &s.dir, &[])).wait();
    again.expect_code(2);
    let line = again.stderr_lines().join("\n");
    assert!(line.starts_with("error: another dftp-receive from alice to bob"), "{}", again.describe());
    // Senders: the second one is refused while the first waits for its answer.
    let mut send = spawn_send(sb, &s.src, &["-b", "64k"]);
    wait_until(TIMEOUT, "the sender's lock", || {
        files_under(&sb.state).iter().filter(|p| p.to_string_lossy().ends_with(".lock")).count() == 2
    });
    let again = sb.spawn("dftp-send", send_args(sb, &s.src, &["-b", "64k"])).wait();
    again.expect_code(2);
    assert!(
        again.stderr_lines().join("\n").starts_with("error: another dftp-send from alice to bob"),
        "{}",
        again.describe()
    );
    assert!(send.is_running() || recv.is_running());
    send.wait().expect_ok();
    recv.wait().expect_ok();
    s.assert_received();
    s.assert_clean();
}

/// The sender's file shrinks while it is sent: the sender stops (exit 1,
/// state kept) and tells the receiver, which says why and goes on waiting.
#[test]
fn a_sender_that_stops_tells_the_receiver_which_waits() {
    let s = setup("a_sender_that_stops_tells_the_receiver_which_waits", "data.bin", 32 * MIB);
    let sb = &s.sb;
    let mut recv = spawn_recv(sb, &s.dir, &[]);
    let send = spawn_send(sb, &s.src, &["-b", "64k", "--window", "2"]);
    wait_until(TIMEOUT, "the first MiB to arrive", || s.part_len() >= MIB);
    std::fs::OpenOptions::new().write(true).open(&s.src).unwrap().set_len(MIB).unwrap();
    let f = send.wait();
    f.expect_code(1);
    // "the file is shorter than it was" or "the file changed while being sent"
    let why = f.stderr_lines().into_iter().find(|l| l.starts_with("error: ")).unwrap_or_default().to_owned();
    assert!(why.contains("the file"), "{}", f.describe());
    let told = format!("alice stopped: {}", why.trim_start_matches("error: "));
    wait_until(TIMEOUT, "the receiver to say so", || recv.stderr_so_far().contains(&told));
    assert!(recv.is_running(), "the receiver waits for the sender to come back");
    assert!(!recv.stderr_so_far().contains("error"), "{}", recv.stderr_so_far());
}

/// The sender's file is rewritten in place (same size) while the sender
/// waits for the stopped receiver: the sender notices at its next read and
/// stops (exit 1) instead of sending a mix of both versions; the receiver
/// hears why and reports no success. Run again, the sender starts over and
/// the new content arrives whole, with no partial file left.
#[test]
fn a_file_changed_during_the_transfer_is_sent_anew() {
    let mut s = setup("a_file_changed_during_the_transfer_is_sent_anew", "data.bin", 32 * MIB);
    let sb = &s.sb;
    let mut recv = spawn_recv(sb, &s.dir, &["--json"]);
    let send = spawn_send(sb, &s.src, &["-b", "1m"]);
    wait_part(&s, MIB);
    recv.signal("STOP");
    // The sender reads at most a window (8 MiB) ahead of the receiver: the
    // first change is in what it sent, the second in what it has not read.
    std::thread::sleep(Duration::from_millis(500));
    let f = std::fs::OpenOptions::new().write(true).open(&s.src).expect("open the source");
    for at in [0, 24 * MIB] {
        f.write_all_at(&[0x5a; 64 * KIB as usize], at).expect("rewrite in place");
    }
    drop(f);
    assert_eq!(file_len(&s.src), Some(s.size), "same size");
    let old_sha = std::mem::replace(&mut s.sha, sha256_file(&s.src));
    assert_ne!(old_sha, s.sha);
    recv.signal("CONT");
    let snd = send.wait();
    snd.expect_code(1);
    let err = snd.stderr_lines().into_iter().find(|l| l.starts_with("error: ")).unwrap_or_default().to_owned();
    assert!(
        err.contains(&format!("{} changed during the transfer (modified ", s.src.display()))
            && err.ends_with("; run dftp-send again to send it anew"),
        "{}",
        snd.describe()
    );
    wait_until(TIMEOUT, "the receiver to say why", || recv.stderr_so_far().contains("alice stopped: "));
    assert!(recv.is_running(), "the receiver reports no success for a torn file\n{}", recv.stderr_so_far());
    let again = spawn_send(sb, &s.src, &["-b", "1m", "--json"]).wait();
    again.expect_ok();
    assert!(again.stderr.contains("changed since the interrupted transfer; starting over"), "{}", again.describe());
    assert_eq!(json(&again)["sha256"], s.sha.as_str(), "the new content");
    let r = recv.wait();
    r.expect_ok();
    assert_eq!(json(&r)["sha256"], s.sha.as_str(), "the new content, verified");
    s.assert_received();
    s.assert_clean();
}

// ---------------------------------------------------------------------------
// Usage errors: exit 2, one line

#[track_caller]
fn usage_error(sb: &Sandbox, tool: &str, a: Vec<OsString>) {
    let f = sb.run(tool, a.clone());
    assert_eq!(f.code, Some(2), "{tool} {a:?} must exit 2\n{}", f.describe());
    let lines = f.stderr_lines();
    assert_eq!(lines.len(), 1, "{tool} {a:?}: one line of error\n{}", f.describe());
    assert!(lines[0].starts_with("error"), "{tool} {a:?}: {}", lines[0]);
    assert!(f.stdout.trim().is_empty(), "{tool} {a:?} printed on stdout\n{}", f.describe());
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let s = setup("usage_errors_exit_2_with_one_line", "data.bin", 10);
    let sb = &s.sb;
    let store: &dyn AsRef<std::ffi::OsStr> = &sb.store;
    let missing = sb.path("no-such-file");
    let not_dir = &s.src;
    // A name the receiver keeps for its own files is never offered.
    let own_name = s.src.with_file_name(".dftp-0000000000000001.part");
    std::fs::write(&own_name, b"x").expect("write");
    for a in [
        args(&[&RECEIVER, &SENDER, &own_name, &"--store", store]),
        args(&[&"Bob", &SENDER, &s.src, &"--store", store]),
        args(&[&RECEIVER, &"../alice", &s.src, &"--store", store]),
        args(&[&RECEIVER, &"", &s.src, &"--store", store]),
        args(&[&RECEIVER, &SENDER, &s.src, &"-b", &"0", &"--store", store]),
        args(&[&RECEIVER, &SENDER, &s.src, &"-b", &"xyz", &"--store", store]),
        args(&[&RECEIVER, &SENDER, &s.src, &"-bs", &"xyz", &"--store", store]),
        args(&[&RECEIVER, &SENDER, &missing, &"--store", store]),
        // A quota must hold one sealed chunk object: 64 KiB + 60 bytes.
        args(&[&RECEIVER, &SENDER, &s.src, &"-b", &"64k", &"--quota", &"64k", &"--store", store]),
        args(&[&RECEIVER, &SENDER, &s.src, &"-b", &"64k", &"--quota", &"1k", &"--store", store]),
        // A party cannot send to itself.
        args(&[&SENDER, &SENDER, &s.src, &"--store", store]),
    ] {
        usage_error(sb, "dftp-send", a);
    }
    for a in [
        args(&[&"Alice", &RECEIVER, &s.dir, &"--store", store]),
        args(&[&SENDER, &"b/ob", &s.dir, &"--store", store]),
        args(&[&SENDER, &RECEIVER, not_dir, &"--store", store]),
        args(&[&SENDER, &RECEIVER, &missing, &"--store", store]),
        args(&[&RECEIVER, &RECEIVER, &s.dir, &"--store", store]),
    ] {
        usage_error(sb, "dftp-receive", a);
    }
    assert_eq!(entries(&s.dir), Vec::<String>::new());
    assert_store_clean(sb);
}

// ---------------------------------------------------------------------------
// A receiver that gives up tells the sender

/// A receiver that times out says what it waited for, tells the sender
/// (which keeps waiting, knowing why), and keeps its partial file and state:
/// run again, it resumes and the file arrives whole.
#[test]
fn a_receiver_that_times_out_tells_the_sender_and_resumes() {
    let s = setup("a_receiver_that_times_out_tells_the_sender_and_resumes", "data.bin", 32 * MIB);
    let mut send = spawn_send(&s.sb, &s.src, &["-b", "64k", "--window", "2"]);
    let recv = spawn_recv(&s.sb, &s.dir, &["--timeout", "2"]);
    wait_part(&s, MIB);
    send.signal("STOP");
    let r = recv.wait();
    send.signal("CONT");
    r.expect_code(1);
    let err = r.stderr_lines().into_iter().find(|l| l.starts_with("error: ")).unwrap_or_default().to_owned();
    assert!(
        err.starts_with("error: timed out: no progress from alice for 2 s, waiting for chunk "),
        "the timeout names its cause\n{}",
        r.describe()
    );
    assert_only_part_file(&s);
    assert!(!files_under(&s.sb.state).is_empty(), "the receiver keeps its state for a later run");
    let again = spawn_recv(&s.sb, &s.dir, &["--json"]).wait();
    again.expect_ok();
    let snd = send.wait();
    snd.expect_ok();
    let told: Vec<&str> = snd.stderr_lines().into_iter().filter(|l| l.contains("bob stopped")).collect();
    assert_eq!(told.len(), 1, "one line\n{}", snd.describe());
    assert!(
        told[0].contains("bob stopped: it timed out after 2 s without progress, waiting for chunk "),
        "{}",
        snd.describe()
    );
    s.assert_received();
    let j = json(&again);
    assert!(num(&j, "resumed_bytes") >= MIB, "the second run resumed: {j}");
    assert_eq!(files_under(&s.sb.state), Vec::<PathBuf>::new(), "no state is kept on either side");
}

/// The same for a sender whose `--timeout` runs out: it names what it waited
/// for, the receiver hears why and waits, and the sender run again resumes;
/// its rate counts this run's bytes only.
#[test]
fn a_sender_that_times_out_tells_the_receiver_and_resumes() {
    let s = setup("a_sender_that_times_out_tells_the_receiver_and_resumes", "data.bin", 32 * MIB);
    let send = spawn_send(&s.sb, &s.src, &["-b", "64k", "--window", "2", "--timeout", "2"]);
    let mut recv = spawn_recv(&s.sb, &s.dir, &[]);
    wait_part(&s, MIB);
    recv.signal("STOP");
    let snd = send.wait();
    recv.signal("CONT");
    snd.expect_code(1);
    let err = snd.stderr_lines().into_iter().find(|l| l.starts_with("error: ")).unwrap_or_default().to_owned();
    assert!(
        err.starts_with("error: timed out: no progress from bob for 2 s, waiting for the acknowledgement of chunk "),
        "the timeout names its cause\n{}",
        snd.describe()
    );
    let again = spawn_send(&s.sb, &s.src, &["-b", "64k", "--window", "2", "--json"]).wait();
    again.expect_ok();
    let r = recv.wait();
    r.expect_ok();
    let told: Vec<&str> = r.stderr_lines().into_iter().filter(|l| l.contains("alice stopped")).collect();
    assert_eq!(told.len(), 1, "one line\n{}", r.describe());
    assert!(
        told[0].contains("alice stopped: it timed out after 2 s without progress, waiting for "),
        "{}",
        r.describe()
    );
    s.assert_received();
    let j = json(&again);
    let (resumed, sent) = (num(&j, "resumed_bytes"), num(&j, "sent_bytes"));
    assert!(resumed > 0 && sent < 32 * MIB, "the second run resumed: {j}");
    let rate = sent as f64 / MIB as f64 / j["seconds"].as_f64().expect("seconds");
    let reported = j["mb_per_s"].as_f64().expect("mb_per_s");
    assert!((reported - rate).abs() <= rate * 1e-6, "mb_per_s {reported}, this run's rate {rate}: {j}");
    assert_eq!(files_under(&s.sb.state), Vec::<PathBuf>::new(), "no state is kept on either side");
}

/// `--timeout` fires on time, whatever the poll interval, and says its
/// value as given: a sender with no receiver (fresh, then resumed) and a
/// receiver with no sender. With 1 s these took 3.5 s and 5 s before; the
/// bound is generous for a loaded machine.
#[test]
fn a_timeout_fires_on_time_and_says_its_value() {
    let s = setup("a_timeout_fires_on_time_and_says_its_value", "data.bin", 10 * KIB);
    let bound = Duration::from_secs(3);
    let run = |sb: &Sandbox, tool: &str, a: Vec<OsString>| {
        let t = Instant::now();
        let f = sb.run(tool, a);
        let took = t.elapsed();
        f.expect_code(1);
        let err = f.stderr_lines().into_iter().find(|l| l.starts_with("error: ")).unwrap_or_default().to_owned();
        (f, err, took)
    };
    for (timeout, again) in [("0.5", false), ("1", true)] {
        let (f, err, took) = run(&s.sb, "dftp-send", send_args(&s.sb, &s.src, &["--timeout", timeout, "-v"]));
        let want = format!(
            "error: timed out: no progress from bob for {timeout} s, waiting for the key of bob \
             (which publishes none if it runs with --insecure-plaintext)"
        );
        assert_eq!(err, want);
        assert!(took < bound, "--timeout {timeout} took {took:?}\n{}", f.describe());
        assert_eq!(f.stderr.contains("resuming"), again, "{}", f.describe());
        assert!(!files_under(&s.sb.state).is_empty(), "the sender keeps its state for a later run");
    }
    // The receiver's key is there (it ran before, or is stopped): nothing
    // is looked up, the sender waits for the offer's answer and would look
    // only at its polls, seconds apart.
    let s = setup("a_timeout_fires_on_time_and_says_its_value", "data.bin", 10 * KIB);
    let bob = identity(&s.sb, RECEIVER);
    publish_key(&s.sb, RECEIVER, bob.public());
    for timeout in ["1", "1.5"] {
        let (f, err, took) = run(&s.sb, "dftp-send", send_args(&s.sb, &s.src, &["--timeout", timeout]));
        let want =
            format!("error: timed out: no progress from bob for {timeout} s, waiting for an answer to the offer");
        assert_eq!(err, want);
        assert!(took < bound, "--timeout {timeout} took {took:?}\n{}", f.describe());
    }
    let sb = Sandbox::new();
    let dir = sb.mkdir("dl");
    let (f, err, took) = run(&sb, "dftp-receive", recv_args(&sb, &dir, &["--timeout", "1"]));
    let want = "error: timed out: no progress from alice for 1 s, waiting for the key of alice \
                (which publishes none if it runs with --insecure-plaintext)";
    assert_eq!(err, want);
    assert!(took < bound, "--timeout 1 took {took:?}\n{}", f.describe());
    // The same with the sender's key there: the receiver waits for the offer.
    let alice = identity(&sb, SENDER);
    publish_key(&sb, SENDER, alice.public());
    let (f, err, took) = run(&sb, "dftp-receive", recv_args(&sb, &dir, &["--timeout", "1"]));
    assert_eq!(err, "error: timed out: no progress from alice for 1 s, waiting for the offer");
    assert!(took < bound, "--timeout 1 took {took:?}\n{}", f.describe());
    assert_eq!(entries(&dir), Vec::<String>::new());
}

/// A receiver restarted after its partial file was deleted cannot resume:
/// it says so, tells the sender, and never writes a file with a hole.
#[test]
fn a_resumed_receiver_without_its_partial_file_gives_up() {
    let s = setup("a_resumed_receiver_without_its_partial_file_gives_up", "big.bin", CRASH_SIZE);
    let send = spawn_send(&s.sb, &s.src, &["-b", "256k"]);
    let recv = spawn_recv(&s.sb, &s.dir, &[]);
    wait_part(&s, CRASH_AT);
    crash(recv);
    std::fs::remove_file(s.part_file().expect("the partial file")).expect("remove it");
    let r = spawn_recv(&s.sb, &s.dir, &[]).wait();
    r.expect_code(1);
    assert!(r.stderr.contains("error: cannot resume: the partial file"), "{}", r.describe());
    let snd = send.wait();
    snd.expect_code(1);
    assert!(
        snd.stderr_lines()
            .iter()
            .any(|l| l.starts_with("error: bob gave up on the transfer: cannot resume: the partial file")),
        "{}",
        snd.describe()
    );
    assert_eq!(entries(&s.dir), Vec::<String>::new(), "nothing written");
    assert_eq!(files_under(&s.sb.state), Vec::<PathBuf>::new(), "no state is kept on either side");
}

// ---------------------------------------------------------------------------
// A store outage

/// The receiver's directory in the store becomes unusable for a while (moved
/// away, a file in its place: every write of the receiver fails): one
/// warning, one line when it answers again (`-v`), and the transfer completes.
#[test]
fn a_store_outage_is_warned_once() {
    let s = setup("a_store_outage_is_warned_once", "data.bin", 32 * MIB);
    let send = spawn_send(&s.sb, &s.src, &["-b", "64k", "--window", "2"]);
    let mut recv = spawn_recv(&s.sb, &s.dir, &["-v"]);
    wait_part(&s, MIB);
    recv.signal("STOP");
    let (mine, away) = (s.sb.store.join(RECEIVER), s.sb.store.join("bob.away"));
    std::fs::rename(&mine, &away).expect("move bob's directory away");
    std::fs::write(&mine, b"not a directory").expect("a file in its place");
    recv.signal("CONT");
    std::thread::sleep(Duration::from_millis(2000));
    std::fs::remove_file(&mine).expect("remove the file");
    std::fs::rename(&away, &mine).expect("move it back");
    let r = recv.wait();
    r.expect_ok();
    send.wait().expect_ok();
    s.assert_received();
    s.assert_clean();
    let lines = r.stderr_lines();
    let warned: Vec<&&str> = lines.iter().filter(|l| l.contains("the store fails")).collect();
    assert_eq!(warned.len(), 1, "one warning per outage\n{}", r.describe());
    assert!(warned[0].contains("WARN"), "{}", r.describe());
    let back = lines.iter().filter(|l| l.contains("the store answers again")).count();
    assert_eq!(back, 1, "one line at its end\n{}", r.describe());
}

// ---------------------------------------------------------------------------
// A receiver restarted after `finished`

/// The sender is stopped (SIGSTOP) before it reads the receiver's
/// `finished`: the receiver waits 10 s, warns, keeps its files and state,
/// and exits 0 with the file in place. Run again (for the next file) while
/// the sender is still stopped, it sends nothing again; once the sender
/// goes on and acknowledges, it cleans up (its state last), the sender
/// exits 0, and the run goes on to receive the next file: that one, not
/// the earlier one again, is what it reports. (Before, it reported the
/// earlier file and exited, and the next file needed yet another run.)
#[test]
fn a_receiver_restarted_after_finished_sends_nothing_again() {
    for attempt in 1..=3 {
        let s = setup("a_receiver_restarted_after_finished_sends_nothing_again", "data.bin", 8 * MIB);
        let mut send = spawn_send(&s.sb, &s.src, &["-b", "256k"]);
        let recv = spawn_recv(&s.sb, &s.dir, &[]);
        // Stop the sender as the last bytes land, before it reads finished.
        let t = Instant::now();
        while s.part_len() < s.size && !s.received().exists() && t.elapsed() < TIMEOUT {}
        send.signal("STOP");
        let r = recv.wait();
        if !r.stderr.contains("has neither acknowledged") {
            eprintln!("attempt {attempt}: the sender read finished before it was stopped\n{}", r.describe());
            send.signal("CONT");
            send.wait();
            continue;
        }
        r.expect_ok();
        assert_eq!(sha256_file(&s.received()), s.sha, "the file is in place");
        let states = files_under(&s.sb.state);
        assert!(states.iter().any(|p| p.to_string_lossy().contains("receive-")), "state kept: {states:?}");
        let msgs = || -> Vec<String> {
            entries(&s.sb.outbox(RECEIVER, SENDER)).into_iter().filter(|n| n.ends_with(".msg")).collect()
        };
        let before = msgs();
        assert!(!before.is_empty(), "files kept in the store for the sender");

        // Ctrl-C while it waits for the acknowledgement: exit 130, and the
        // files and state stay for the next run.
        let mut stopped = spawn_recv(&s.sb, &s.dir, &[]);
        std::thread::sleep(Duration::from_millis(1000));
        stopped.signal("INT");
        let f = stopped.wait();
        assert_eq!(f.code, Some(130), "{}", f.describe());
        assert_eq!(msgs(), before, "nothing sent or removed");

        let mut again = spawn_recv(&s.sb, &s.dir, &[]);
        std::thread::sleep(Duration::from_millis(1500));
        assert!(again.is_running(), "waits for the sender's acknowledgement");
        assert_eq!(msgs(), before, "nothing sent again");
        send.signal("CONT");
        let t = Instant::now();
        send.wait().expect_ok();
        // (The new run saves a state of its own under the same name.)
        let finished_state = || {
            let states = files_under(&s.sb.state);
            states.iter().any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("\"Finished\"")))
        };
        wait_until(Duration::from_secs(8), "the clean-up once acknowledged", || msgs().is_empty() && !finished_state());
        assert!(t.elapsed() < Duration::from_secs(8), "cleaned up once acknowledged: {:?}", t.elapsed());
        assert!(again.is_running(), "waits for the next file");
        // The next file, from a new run of the sender.
        let next = s.sb.mkdir("src2").join("next.bin");
        random_file(&next, 300_001, dmp_testkit::seed("next"));
        let send2 = spawn_send(&s.sb, &next, &[]);
        let r2 = again.wait();
        r2.expect_ok();
        send2.wait().expect_ok();
        assert!(r2.stdout.contains("next.bin") && !r2.stdout.contains("data.bin"), "{}", r2.describe());
        assert!(!r2.stderr.contains("has neither acknowledged"), "{}", r2.describe());
        assert_eq!(sha256_file(&s.dir.join("next.bin")), sha256_file(&next));
        assert_eq!(sha256_file(&s.received()), s.sha, "the earlier file stays in place");
        assert_eq!(entries(&s.dir), vec!["data.bin".to_owned(), "next.bin".to_owned()]);
        s.assert_clean();
        return;
    }
    panic!("the sender read finished before it could be stopped, three times");
}

// ---------------------------------------------------------------------------
// Local state that cannot be saved

/// A state directory that cannot be used (here a file in its place): the
/// transfer goes on and completes, and each side says once that it could
/// not save its state (and once that it could not read it). (Before, each side warned at every save, twice per
/// chunk: 62 lines for 31 chunks, hundreds for a large file.)
#[test]
fn an_unusable_state_directory_is_a_warning_once() {
    let s = setup("an_unusable_state_directory_is_a_warning_once", "data.bin", 20 * BLOCK + 5);
    let not_a_dir = s.sb.path("state-is-a-file");
    std::fs::write(&not_a_dir, b"not a directory").expect("write");
    let mut cmd = s.sb.command("dftp-receive", recv_args(&s.sb, &s.dir, &["--timeout", "20"]));
    cmd.env("DMP_STATE_DIR", &not_a_dir);
    let recv = s.sb.spawn_command("dftp-receive", cmd);
    let mut cmd = s.sb.command("dftp-send", send_args(&s.sb, &s.src, &["-b", "64k", "--timeout", "20"]));
    cmd.env("DMP_STATE_DIR", &not_a_dir);
    let send = s.sb.spawn_command("dftp-send", cmd);
    let (r, snd) = (recv.wait(), send.wait());
    r.expect_ok();
    snd.expect_ok();
    s.assert_received();
    for f in [&r, &snd] {
        // (One more line where the state is first read.)
        let warnings = f.stderr_lines().iter().filter(|l| l.contains("state file")).count();
        assert!(warnings <= 2, "at most two lines about the state file\n{}", f.describe());
        // And that no run lock could be taken (it was a debug line only).
        let locks = f.stderr_lines().iter().filter(|l| l.contains("cannot take the run lock")).count();
        assert!((1..=2).contains(&locks), "one line for each run lock not taken\n{}", f.describe());
    }
}
