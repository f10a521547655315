//! End-to-end security tests of dftp-send and dftp-receive: the real
//! binaries over a folder store that the tests read, tamper with, forge,
//! replay into and re-key, each test in its own sandbox.
//!
//! The sender is "alice", the receiver "bob"; "mallory" is a third party who
//! can write the store, "carol" another recipient of alice's.

use dmp_core::PeerId;
use dmp_core::crypto::{INFO_CHUNK, INFO_MSG, Identity, PeerCrypto, PublicKey, SEAL_OVERHEAD, os_rng};
use dmp_core::keys::{KEY_FILE, key_file_body, load_or_create_identity, parse_key_file};
use dmp_core::proto::dftp::chunk_aad;
use dmp_core::proto::dftp_msg::{ChunkMsg, Offer, parse_chunk_object_name};
use dmp_core::proto::mailbox::{msg_name, parse_msg_name};
use dmp_core::wire::{Envelope, FLAG_ENCRYPTED, Kind, sha256};
use dmp_testkit::{
    Finished, Proc, Sandbox, TIMEOUT, entries, file_len, files_under, random_file, sha256_file, wait_until,
};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SENDER: &str = "alice";
const RECEIVER: &str = "bob";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------
// Helpers

fn peer(s: &str) -> PeerId {
    PeerId::new(s).expect("valid id")
}

/// `dftp-send bob alice FILE --store STORE EXTRA...`
fn spawn_send(sb: &Sandbox, file: &Path, extra: &[&str]) -> Proc {
    let mut v: Vec<OsString> = vec![RECEIVER.into(), SENDER.into(), file.into(), "--store".into(), (&sb.store).into()];
    v.extend(extra.iter().map(OsString::from));
    sb.spawn("dftp-send", v)
}

/// `dftp-receive alice bob DIR --store STORE EXTRA...`
fn spawn_recv(sb: &Sandbox, dir: &Path, extra: &[&str]) -> Proc {
    let mut v: Vec<OsString> = vec![SENDER.into(), RECEIVER.into(), dir.into(), "--store".into(), (&sb.store).into()];
    v.extend(extra.iter().map(OsString::from));
    sb.spawn("dftp-receive", v)
}

/// `id`'s key in the sandbox's config directory (the one its tools use), created if needed.
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

fn publish_key(sb: &Sandbox, id: &str, key: &PublicKey) {
    put_file(&sb.store.join(id), KEY_FILE, &key_file_body(&peer(id), key));
}

fn published_key(sb: &Sandbox, id: &str) -> Option<PublicKey> {
    let bytes = std::fs::read(sb.store.join(id).join(KEY_FILE)).ok()?;
    parse_key_file(&peer(id), &bytes).ok()
}

/// Seals `env` as a secure link does and encodes it.
fn seal(c: &PeerCrypto, mut env: Envelope) -> Vec<u8> {
    env.flags |= FLAG_ENCRYPTED;
    env.payload = c.seal(INFO_MSG, &env.aad(), &env.payload);
    env.encode()
}

/// The message files in `from`'s outbox to `to` that decode and open with
/// `crypto`, by file name.
fn messages(sb: &Sandbox, from: &str, to: &str, crypto: &PeerCrypto) -> Vec<(String, Envelope)> {
    let dir = sb.outbox(from, to);
    entries(&dir)
        .into_iter()
        .filter(|n| parse_msg_name(n).is_some())
        .filter_map(|n| {
            let b = std::fs::read(dir.join(&n)).ok()?;
            let mut env = Envelope::decode(&b, Some(&peer(to))).ok()?;
            env.payload = crypto.open(INFO_MSG, &env.aad(), &env.payload).ok()?;
            Some((n, env))
        })
        .collect()
}

fn msg_files(dir: &Path) -> Vec<String> {
    entries(dir).into_iter().filter(|n| parse_msg_name(n).is_some()).collect()
}

fn chunk_files(dir: &Path) -> Vec<String> {
    entries(dir).into_iter().filter(|n| parse_chunk_object_name(n).is_some()).collect()
}

fn part_file(dir: &Path) -> Option<PathBuf> {
    dmp_testkit::find_file(dir, |n| n.starts_with(".dftp-") && n.ends_with(".part"))
}

fn part_len(dir: &Path) -> u64 {
    part_file(dir).and_then(|p| file_len(&p)).unwrap_or(0)
}

/// The partial file holds exactly a prefix of the source (never a byte
/// that was not sent).
#[track_caller]
fn assert_part_is_prefix(dir: &Path, src: &[u8]) -> u64 {
    let Some(p) = part_file(dir) else { return 0 };
    let part = std::fs::read(p).expect("read the partial file");
    assert!(part.len() <= src.len(), "the partial file is longer than the source");
    assert!(part == src[..part.len()], "the partial file is not a prefix of the source");
    part.len() as u64
}

/// Freezes a running process, checks it has not finished, then kills it.
#[track_caller]
fn crash(mut p: Proc) {
    p.signal("STOP");
    if let Some(f) = p.try_finish() {
        panic!("{} finished before it could be killed\n{}", f.label, f.describe());
    }
    let f = p.kill();
    assert_eq!(f.signal, Some(9), "{}", f.describe());
}

/// Waits until the names in `dir` have not changed for `quiet`.
fn wait_stable(dir: &Path, quiet: Duration) {
    let until = Instant::now() + TIMEOUT;
    let mut last = entries(dir);
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        assert!(Instant::now() < until, "{} never settled", dir.display());
        std::thread::sleep(Duration::from_millis(20));
        let now = entries(dir);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// Flips the bits of `mask` in byte `at` of `path`, in place (same name,
/// same length); returns the original byte.
fn flip(path: &Path, at: u64, mask: u8) -> u8 {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open to flip");
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("read byte");
    f.write_all_at(&[b[0] ^ mask], at).expect("write byte");
    b[0]
}

fn restore(path: &Path, at: u64, byte: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open to restore");
    f.write_all_at(&[byte], at).expect("restore byte");
}

/// Alters one bit of the sealed payload of the envelope in `path` and
/// recomputes both its checksums, as anyone who can write the store can:
/// only the authentication can tell. Written in place; returns the original.
fn forge(path: &Path, rng: &mut Rng) -> Vec<u8> {
    let orig = std::fs::read(path).expect("read the envelope");
    let (s, r) = (orig[7] as usize, orig[8] as usize);
    let p = u32::from_be_bytes(orig[36..40].try_into().expect("4 bytes")) as usize;
    let start = 72 + s + r;
    assert!(p > 0 && orig.len() == start + p + 32, "not a sealed envelope");
    let mut bad = orig.clone();
    bad[start + rng.below(p as u64) as usize] ^= 1 << rng.below(8);
    let h = sha256(&bad[start..start + p]);
    bad[40..72].copy_from_slice(&h);
    let n = bad.len();
    let h = sha256(&bad[..n - 32]);
    bad[n - 32..].copy_from_slice(&h);
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open to forge");
    f.write_all_at(&bad, 0).expect("forge");
    orig
}

fn put_back(path: &Path, orig: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open to restore");
    f.write_all_at(orig, 0).expect("restore");
}

/// A small deterministic generator for byte positions.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The lines of `stderr` saying a file of the store was refused.
fn refusals<'a>(stderr: &'a str, key: &str) -> Vec<&'a str> {
    let needle = format!("not yet usable: {key}");
    stderr.lines().filter(|l| l.contains(&needle)).collect()
}

#[track_caller]
fn assert_store_clean(sb: &Sandbox) {
    for (a, b) in [(SENDER, RECEIVER), (RECEIVER, SENDER)] {
        let left = files_under(&sb.outbox(a, b));
        assert!(left.is_empty(), "files left in the store under {a}/{b}: {left:?}");
    }
}

fn json(f: &Finished) -> serde_json::Value {
    let line = f.stdout.lines().find(|l| !l.trim().is_empty()).unwrap_or_else(|| panic!("no JSON\n{}", f.describe()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {e}\n{}", f.describe()))
}

// ---------------------------------------------------------------------------
// 1. No plaintext in the store

/// Recognisable text, repeated: every 64-byte run of the file is one of
/// `period` runs, so a store file can be searched for any of them quickly.
struct Plaintext {
    period: Vec<u8>,
    /// First 8 bytes of each 64-byte run → the runs' offsets in the period.
    index: HashMap<u64, Vec<usize>>,
    doubled: Vec<u8>,
    /// SHA-256 of the whole file and of each of its chunks: raw and hex.
    hashes: Vec<(String, Vec<u8>)>,
}

const RUN: usize = 64;

impl Plaintext {
    fn new() -> Plaintext {
        let mut period = Vec::new();
        for i in 0..23 {
            period.extend_from_slice(
                format!("line {i:02}: the quick brown fox jumps over the lazy dog, secret #{}\n", i * 7919).as_bytes(),
            );
        }
        let doubled = [period.clone(), period.clone()].concat();
        let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
        for k in 0..period.len() {
            index.entry(Self::key(&doubled[k..])).or_default().push(k);
        }
        Plaintext { period, index, doubled, hashes: Vec::new() }
    }

    fn key(b: &[u8]) -> u64 {
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, path: &Path, size: u64, block: u64) -> Vec<u8> {
        let data: Vec<u8> = self.period.iter().copied().cycle().take(size as usize).collect();
        std::fs::write(path, &data).expect("write source");
        let mut add = |b: &[u8]| {
            let h = sha256(b);
            self.hashes.push((dmp_core::wire::sha256_hex(b), h.to_vec()));
        };
        add(&data);
        for c in data.chunks(block as usize) {
            add(c);
        }
        data
    }

    /// Where `bytes` contains a 64-byte run of the plaintext, if anywhere.
    fn find_run(&self, bytes: &[u8]) -> Option<usize> {
        if bytes.len() < RUN {
            return None;
        }
        (0..=bytes.len() - RUN).find(|&o| {
            self.index
                .get(&Self::key(&bytes[o..]))
                .is_some_and(|ks| ks.iter().any(|&k| self.doubled[k..k + RUN] == bytes[o..o + RUN]))
        })
    }

    /// What in `path` (its name or its bytes) reveals the plaintext.
    fn leak(&self, path: &Path, bytes: &[u8]) -> Option<String> {
        if let Some(o) = self.find_run(bytes) {
            return Some(format!("{}: a 64-byte run of the plaintext at offset {o}", path.display()));
        }
        let name = path.to_string_lossy();
        for (hex, raw) in &self.hashes {
            let upper = hex.to_ascii_uppercase();
            if name.contains(hex.as_str()) || name.contains(&upper) {
                return Some(format!("{}: the name holds a plaintext SHA-256", path.display()));
            }
            let hit = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
            if hit(hex.as_bytes()) || hit(upper.as_bytes()) || hit(raw) {
                return Some(format!("{}: holds the plaintext SHA-256 {hex}", path.display()));
            }
        }
        None
    }

    /// Reads every file under `store` (skipping those that vanish meanwhile).
    fn scan(&self, store: &Path) -> ScanResult {
        let mut r = ScanResult::default();
        for p in files_under(store) {
            let Ok(bytes) = std::fs::read(&p) else { continue };
            r.files += 1;
            r.bytes += bytes.len() as u64;
            if p.extension().is_some_and(|e| e == "chunk") {
                r.chunks += 1;
            }
            if let Some(l) = self.leak(&p, &bytes) {
                r.leaks.push(l);
            }
        }
        r
    }
}

#[derive(Default, Debug)]
struct ScanResult {
    files: u64,
    chunks: u64,
    bytes: u64,
    leaks: Vec<String>,
}

impl ScanResult {
    #[track_caller]
    fn assert_clean(&self, when: &str) {
        assert!(self.leaks.is_empty(), "{when}: the store reveals the plaintext:\n{}", self.leaks.join("\n"));
    }
}

#[test]
fn the_store_never_holds_the_plaintext_or_its_hash() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join("secret.txt");
    let dir = sb.mkdir("dl");
    let block = 256 * KIB;
    let size = 8 * MIB + 1234;
    let mut pt = Plaintext::new();
    let data = pt.write(&src, size, block);
    // The checker finds the plaintext where it is.
    assert!(pt.find_run(&data[1000..1100]).is_some() && pt.leak(&src, &data).is_some());
    assert!(pt.find_run(&[0u8; 200]).is_none());

    let send = spawn_send(&sb, &src, &["-b", "256k", "--window", "2"]);
    let mut recv = spawn_recv(&sb, &dir, &[]);
    let outbox = sb.outbox(SENDER, RECEIVER);

    // Paused: the receiver stops as soon as chunks flow; the sender fills its window.
    wait_until(TIMEOUT, "the first chunk object", || !chunk_files(&outbox).is_empty());
    recv.signal("STOP");
    wait_stable(&outbox, Duration::from_millis(500));
    let paused = pt.scan(&sb.store);
    eprintln!("paused: {paused:?}");
    assert!(paused.chunks >= 1, "no chunk object while paused: {paused:?}");
    assert!(!msg_files(&outbox).is_empty(), "no message while paused");
    paused.assert_clean("paused, sender alone");

    // Watch the store all through the transfer.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(ScanResult::default()));
    let watcher = {
        let (stop, seen, store) = (stop.clone(), seen.clone(), sb.store.clone());
        let pt = Plaintext { hashes: pt.hashes.clone(), ..Plaintext::new() };
        std::thread::spawn(move || {
            let mut scans = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = pt.scan(&store);
                let mut s = seen.lock().expect("lock");
                s.files += r.files;
                s.chunks += r.chunks;
                s.bytes += r.bytes;
                s.leaks.extend(r.leaks);
                scans += 1;
            }
            scans
        })
    };
    recv.signal("CONT");

    // Paused again midway.
    wait_until(TIMEOUT, "half of the file", || part_len(&dir) >= size / 2);
    recv.signal("STOP");
    wait_stable(&outbox, Duration::from_millis(300));
    let midway = pt.scan(&sb.store);
    eprintln!("midway: {midway:?}");
    midway.assert_clean("midway");
    recv.signal("CONT");

    recv.wait().expect_ok();
    send.wait().expect_ok();
    stop.store(true, Ordering::Relaxed);
    let scans = watcher.join().expect("watcher");
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    eprintln!("during the transfer: {scans} scans, {seen:?}");
    assert!(seen.chunks > 0, "the watcher never saw a chunk object: {seen:?}");
    seen.assert_clean("during the transfer");

    // At the end: the key files remain, nothing else.
    assert_eq!(sha256_file(&dir.join("secret.txt")), pt.hashes[0].0, "received file");
    assert_store_clean(&sb);
    let end = pt.scan(&sb.store);
    assert!(end.files >= 2, "the key files should remain: {end:?}");
    end.assert_clean("at the end");
}

// ---------------------------------------------------------------------------
// 2. A flipped byte in any stored file is detected

/// The chunk messages alice wrote for bob: (message file, chunk).
fn chunk_messages(sb: &Sandbox, bob: &PeerCrypto) -> Vec<(String, ChunkMsg)> {
    messages(sb, SENDER, RECEIVER, bob)
        .into_iter()
        .filter(|(_, e)| e.kind == Kind::Chunk)
        .filter_map(|(n, e)| Some((n, serde_json::from_slice::<ChunkMsg>(&e.payload).ok()?)))
        .collect()
}

/// Restarts bob (verbose) with files of the store altered, waits until he
/// has written everything before chunk `stuck`, checks for a while that he
/// writes nothing more, says why, and kills him.
fn bob_stops_at(sb: &Sandbox, dir: &Path, src: &[u8], stuck: u64, block: u64, refused: &[(String, &str)]) {
    let mut recv = spawn_recv(sb, dir, &["-vv"]);
    let offset = stuck * block;
    wait_until(TIMEOUT, "bob to reach the altered chunk", || part_len(dir) >= offset);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(part_len(dir), offset, "bob wrote past the start of chunk {stuck}");
        if let Some(f) = recv.try_finish() {
            panic!("bob gave up at once\n{}", f.describe());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_part_is_prefix(dir, src);
    wait_until(TIMEOUT, "bob to say what he refused", || {
        let err = recv.stderr_so_far();
        refused.iter().all(|(k, why)| refusals(&err, k).iter().any(|l| l.contains(why)))
    });
    let err = recv.stderr_so_far();
    for (k, _) in refused {
        eprintln!("{}", refusals(&err, k)[0]);
    }
    crash(recv);
}

#[test]
fn a_flipped_byte_in_any_stored_file_is_detected() {
    let seed = dmp_testkit::seed("a_flipped_byte_in_any_stored_file_is_detected");
    let mut rng = Rng(seed | 1);
    let sb = Sandbox::new();
    let src_path = sb.mkdir("src").join("data.bin");
    random_file(&src_path, 4 * MIB, seed);
    let src = std::fs::read(&src_path).expect("source");
    let dir = sb.mkdir("dl");
    let block = 256 * KIB;
    let outbox = sb.outbox(SENDER, RECEIVER);
    let inbox = sb.outbox(RECEIVER, SENDER);

    let send = spawn_send(&sb, &src_path, &["-b", "256k", "--window", "2", "-vv"]);
    let recv = spawn_recv(&sb, &dir, &[]);
    wait_until(TIMEOUT, "the first chunk object", || !chunk_files(&outbox).is_empty());
    crash(recv);
    wait_stable(&outbox, Duration::from_millis(500));
    assert_part_is_prefix(&dir, &src);
    let bob = PeerCrypto::new(identity(&sb, RECEIVER), published_key(&sb, SENDER).expect("alice's key"), os_rng());

    // The first chunk bob has not written, with its message and object in the store.
    let pending = || {
        let w = part_len(&dir);
        chunk_messages(&sb, &bob)
            .into_iter()
            .filter(|(_, c)| c.index * block >= w && outbox.join(&c.object).exists())
            .min_by_key(|(_, c)| c.index)
    };
    let mut tries = 0;
    let c = loop {
        if let Some((_, c)) = pending() {
            break c;
        }
        // Bob wrote every chunk in the store before the crash: one more step.
        tries += 1;
        assert!(tries < 5, "never caught a chunk bob had not written");
        let recv = spawn_recv(&sb, &dir, &[]);
        wait_until(TIMEOUT, "a chunk bob has not written", || pending().is_some());
        crash(recv);
        wait_stable(&outbox, Duration::from_millis(500));
    };
    let written = assert_part_is_prefix(&dir, &src);
    assert_eq!(c.index * block, written, "the next chunk for bob");

    // (a) A chunk object: a bit of its ciphertext flipped.
    let obj = outbox.join(&c.object);
    let at = rng.below(file_len(&obj).expect("object") - SEAL_OVERHEAD as u64);
    eprintln!("flipping byte {at} of {}", c.object);
    let orig = flip(&obj, at, 0x01 << rng.below(8));
    bob_stops_at(&sb, &dir, &src, c.index, block, &[(format!("alice/bob/{}", c.object), "authentication failed")]);
    restore(&obj, at, orig);

    // (a') The same chunk sealed by mallory, claiming to be alice's.
    let original = std::fs::read(&obj).expect("object");
    let mallory = PeerCrypto::new(
        Identity::from_seed(b"mallory's seed, for this test..."),
        identity(&sb, RECEIVER).public().clone(),
        os_rng(),
    );
    let span = c.offset as usize..(c.offset + c.len) as usize;
    let aad = chunk_aad(&peer(SENDER), &peer(RECEIVER), &c.transfer, c.index, c.len);
    let forged = mallory.seal(INFO_CHUNK, &aad, &src[span]);
    assert_eq!(forged.len(), original.len());
    std::fs::OpenOptions::new().write(true).open(&obj).expect("open").write_all_at(&forged, 0).expect("forge");
    bob_stops_at(&sb, &dir, &src, c.index, block, &[(format!("alice/bob/{}", c.object), "SHA-256 mismatch")]);
    put_back(&obj, &original);

    // (b) A message and (c) the head, forged: altered, checksums recomputed.
    wait_stable(&outbox, Duration::from_millis(500));
    let (msg, c) = pending().expect("a chunk bob has not written");
    let written = assert_part_is_prefix(&dir, &src);
    assert_eq!(c.index * block, written, "the next chunk for bob");
    let (mpath, head) = (outbox.join(&msg), outbox.join("head"));
    eprintln!("forging {msg} and head");
    let (morig, horig) = (forge(&mpath, &mut rng), forge(&head, &mut rng));
    let refused =
        [(format!("alice/bob/{msg}"), "authentication failed"), ("alice/bob/head".into(), "authentication failed")];
    bob_stops_at(&sb, &dir, &src, c.index, block, &refused);
    put_back(&mpath, &morig);
    put_back(&head, &horig);

    // (b') The same message with a byte flipped as is (a checksum, length or
    // header check catches it).
    let at = rng.below(file_len(&mpath).expect("msg"));
    let orig = flip(&mpath, at, 0x80 >> rng.below(8));
    bob_stops_at(&sb, &dir, &src, c.index, block, &[(format!("alice/bob/{msg}"), "")]);
    restore(&mpath, at, orig);

    // (d) Bob's ack, read by alice: refused, her files stay.
    let ack = inbox.join("ack");
    assert!(ack.exists(), "bob's ack");
    let before = send.stderr_so_far();
    let msgs_before = msg_files(&outbox);
    eprintln!("forging bob's ack");
    let aorig = forge(&ack, &mut rng);
    wait_until(TIMEOUT, "alice to refuse the forged ack", || {
        refusals(&send.stderr_so_far()[before.len()..], "bob/alice/ack")
            .iter()
            .any(|l| l.contains("authentication failed"))
    });
    eprintln!("{}", refusals(&send.stderr_so_far()[before.len()..], "bob/alice/ack")[0]);
    assert_eq!(msg_files(&outbox), msgs_before, "alice's messages changed after a forged ack");
    put_back(&ack, &aorig);

    // Restored: the transfer completes, byte-identical.
    let r = spawn_recv(&sb, &dir, &[]).wait();
    r.expect_ok();
    send.wait().expect_ok();
    assert_eq!(entries(&dir), vec!["data.bin".to_owned()]);
    assert_eq!(sha256_file(&dir.join("data.bin")), sha256_file(&src_path), "received file");
    assert_store_clean(&sb);
}

// ---------------------------------------------------------------------------
// 3. Third parties, other recipients, replays, changed keys

const CRAFTED_TRANSFER: &str = "00000000000000aa";

/// Writes a head and an offer into alice's outbox towards bob, sealed with `c`.
fn craft_offer(sb: &Sandbox, c: &PeerCrypto, recipient: &str) {
    let session = 0x0123_4567_89ab_cdef_u64;
    let env = |kind, seq, payload| Envelope {
        flags: 0,
        kind,
        sender: peer(SENDER),
        recipient: peer(recipient),
        session,
        seq,
        base: 1,
        payload,
    };
    let offer = Offer { transfer: CRAFTED_TRANSFER.into(), name: "invoice.pdf".into(), size: 10, block_size: 1024 };
    let body = serde_json::to_vec(&offer).expect("json");
    let dir = sb.outbox(SENDER, RECEIVER);
    put_file(&dir, &msg_name(session, 1), &seal(c, env(Kind::Offer, 1, body)));
    put_file(&dir, "head", &seal(c, env(Kind::Head, 0, Vec::new())));
}

/// Bob runs against what was planted in alice's outbox: he never accepts
/// or writes anything, says why with -vv, and times out (exit 1).
#[track_caller]
fn bob_ignores_planted_files(sb: &Sandbox, dir: &Path, reason: &str) -> Finished {
    let f = spawn_recv(sb, dir, &["-vv", "--timeout", "3"]).wait();
    f.expect_code(1);
    assert!(f.stderr.contains("timed out"), "{}", f.describe());
    let refused = refusals(&f.stderr, "alice/bob/");
    assert!(refused.iter().any(|l| l.contains(reason)), "bob does not say {reason:?}\n{}", f.describe());
    assert!(!f.stderr.contains("offered"), "bob saw an offer\n{}", f.describe());
    assert_eq!(entries(dir), Vec::<String>::new(), "bob created a file");
    assert_eq!(msg_files(&sb.outbox(RECEIVER, SENDER)), Vec::<String>::new(), "bob answered");
    f
}

#[test]
fn an_offer_sealed_by_a_third_party_is_rejected() {
    let sb = Sandbox::new();
    let dir = sb.mkdir("dl");
    // Alice's real key is published (and will be pinned by bob).
    let alice = identity(&sb, SENDER);
    publish_key(&sb, SENDER, alice.public());
    let bob = identity(&sb, RECEIVER);
    // Mallory seals to bob with her own key, claiming to be alice.
    let mallory = Identity::from_seed(b"mallory's seed, for this test...");
    craft_offer(&sb, &PeerCrypto::new(mallory, bob.public().clone(), os_rng()), RECEIVER);
    let f = bob_ignores_planted_files(&sb, &dir, "authentication failed");
    assert!(
        f.stderr.contains(&alice.public().fingerprint()),
        "first contact shows alice's fingerprint\n{}",
        f.describe()
    );

    // The same offer sealed by alice is accepted (the test plants it right).
    craft_offer(&sb, &PeerCrypto::new(alice.clone(), bob.public().clone(), os_rng()), RECEIVER);
    let recv = spawn_recv(&sb, &dir, &["--timeout", "3"]);
    let from_bob = PeerCrypto::new(alice, bob.public().clone(), os_rng());
    wait_until(TIMEOUT, "bob to accept alice's own offer", || {
        messages(&sb, RECEIVER, SENDER, &from_bob).iter().any(|(_, e)| e.kind == Kind::Accept)
    });
    drop(recv);
}

#[test]
fn a_message_for_another_recipient_is_rejected() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join("for-carol.txt");
    std::fs::write(&src, b"for carol's eyes only\n").expect("source");
    let dir = sb.mkdir("dl");
    // Carol's key is known, so alice offers to carol at once.
    let carol = identity(&sb, "carol");
    publish_key(&sb, "carol", carol.public());
    let mut v: Vec<OsString> = vec!["carol".into(), SENDER.into(), (&src).into(), "--store".into(), (&sb.store).into()];
    v.push("-q".into());
    let send = sb.spawn("dftp-send", v);
    let to_carol = sb.outbox(SENDER, "carol");
    wait_until(TIMEOUT, "alice's offer to carol", || {
        to_carol.join("head").exists() && !msg_files(&to_carol).is_empty()
    });
    // Alice's real, sealed files for carol, copied into her outbox towards bob.
    for n in entries(&to_carol) {
        let bytes = std::fs::read(to_carol.join(&n)).expect("read");
        put_file(&sb.outbox(SENDER, RECEIVER), &n, &bytes);
    }
    bob_ignores_planted_files(&sb, &dir, "addressed to carol, not to bob");
    drop(send);
}

/// Copies every file that appears in `dir` (first version of each name;
/// every version of `head`) until stopped.
struct Recorder {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<BTreeMap<String, Vec<u8>>>>,
}

impl Recorder {
    fn start(dir: PathBuf) -> Recorder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut heads = 0;
            while !flag.load(Ordering::Relaxed) {
                for n in entries(&dir) {
                    if n.starts_with('.') {
                        continue;
                    }
                    if n == "head" {
                        if let Ok(b) = std::fs::read(dir.join(&n)) {
                            if !got.values().any(|v| *v == b) {
                                got.insert(format!("head.{heads:04}"), b);
                                heads += 1;
                            }
                        }
                    } else if let std::collections::btree_map::Entry::Vacant(e) = got.entry(n) {
                        if let Ok(b) = std::fs::read(dir.join(e.key())) {
                            e.insert(b);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            got
        });
        Recorder { stop, handle: Some(handle) }
    }

    fn finish(mut self) -> BTreeMap<String, Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("recorder")
    }
}

/// Puts recorded files back under their names (the first head recorded as `head`).
fn replay(dir: &Path, files: &BTreeMap<String, Vec<u8>>, what: &str) -> usize {
    let mut n = 0;
    for (name, bytes) in files {
        let name = match name.strip_prefix("head.") {
            Some("0000") => "head",
            Some(_) => continue,
            None => name.as_str(),
        };
        if name == "ack" {
            continue;
        }
        put_file(dir, name, bytes);
        n += 1;
    }
    eprintln!("replayed {n} files of {what}");
    n
}

#[test]
fn old_messages_and_an_earlier_session_copied_back_are_ignored() {
    let seed = dmp_testkit::seed("old_messages_and_an_earlier_session_copied_back_are_ignored");
    let sb = Sandbox::new();
    let first = sb.mkdir("src").join("first.bin");
    let second = sb.path("src/second.bin");
    random_file(&first, MIB, seed);
    random_file(&second, 4 * MIB, seed ^ 1);
    let dir = sb.mkdir("dl");
    let outbox = sb.outbox(SENDER, RECEIVER);

    // Transfer 1, every file alice writes recorded.
    let rec = Recorder::start(outbox.clone());
    let send = spawn_send(&sb, &first, &["-b", "64k", "--window", "2"]);
    spawn_recv(&sb, &dir, &[]).wait().expect_ok();
    send.wait().expect_ok();
    let old = rec.finish();
    let count = |suffix: &str| old.keys().filter(|k| k.ends_with(suffix)).count();
    assert!(count(".msg") >= 2 && count(".chunk") >= 1, "recorded {:?}", old.keys().collect::<Vec<_>>());
    assert!(old.contains_key("head.0000"));
    std::fs::remove_file(dir.join("first.bin")).expect("move the first file away");

    // Transfer 2, paused midway: transfer 1's files and transfer 2's own
    // acknowledged messages are copied back.
    let rec = Recorder::start(outbox.clone());
    let send = spawn_send(&sb, &second, &["-b", "64k", "--window", "2", "--json"]);
    let mut recv = spawn_recv(&sb, &dir, &["--json", "-vv"]);
    wait_until(TIMEOUT, "a quarter of the second file", || part_len(&dir) >= MIB);
    recv.signal("STOP");
    let early = rec.finish();
    let early: BTreeMap<String, Vec<u8>> =
        early.into_iter().filter(|(n, _)| n.starts_with("head.") || !outbox.join(n).exists()).collect();
    assert!(early.keys().filter(|k| k.ends_with(".msg")).count() >= 2, "{:?}", early.keys().collect::<Vec<_>>());
    replay(&outbox, &old, "the first transfer");
    replay(&outbox, &early, "the second transfer's start");
    recv.signal("CONT");
    let r = recv.wait();
    r.expect_ok();
    send.wait().expect_ok();
    assert_eq!(entries(&dir), vec!["second.bin".to_owned()], "only the second file arrives");
    assert_eq!(sha256_file(&dir.join("second.bin")), sha256_file(&second));
    let rj = json(&r);
    assert_eq!(rj["written_bytes"].as_u64(), Some(4 * MIB), "bob wrote a chunk twice: {rj}");
    assert!(!r.stderr.contains("abandoning"), "bob followed the replayed transfer\n{}", r.describe());
    assert_store_clean(&sb);
}

/// The error line of a refused changed key names both fingerprints and the
/// way to accept the new key.
#[track_caller]
fn assert_key_refused(f: &Finished, pinned: &str, published: &str) {
    f.expect_code(1);
    let errors: Vec<&str> = f.stderr_lines().into_iter().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line\n{}", f.describe());
    let e = errors[0];
    assert!(e.contains("key of alice changed"), "{e}");
    assert!(e.contains(pinned) && e.contains(published), "both fingerprints ({pinned}, {published}): {e}");
    assert!(e.contains("--accept-new-key alice"), "how to accept: {e}");
}

#[test]
fn a_changed_peer_key_is_refused_until_accepted() {
    let sb = Sandbox::new();
    let src1 = sb.mkdir("src").join("one.txt");
    let src2 = sb.path("src/two.txt");
    std::fs::write(&src1, b"first file\n").expect("source");
    std::fs::write(&src2, b"second file\n").expect("source");
    let dir = sb.mkdir("dl");

    // First contact: each side pins the other and shows its fingerprint.
    let send = spawn_send(&sb, &src1, &[]);
    let r = spawn_recv(&sb, &dir, &[]).wait();
    r.expect_ok();
    let s = send.wait();
    s.expect_ok();
    let old = published_key(&sb, SENDER).expect("alice's key").fingerprint();
    assert!(s.stderr.contains(&format!("created a key for alice: fingerprint {old}")), "{}", s.describe());
    assert!(r.stderr.contains(&format!("first contact with alice: key fingerprint {old}")), "{}", r.describe());
    let fp = sb.run("dftp-send", [RECEIVER, SENDER, "--fingerprint", "x"]);
    assert_eq!(fp.stdout.trim(), format!("alice {old}"), "{}", fp.describe());

    // Alice loses her key: her next run makes and publishes a new one.
    std::fs::remove_file(sb.config.join("keys/alice.key")).expect("remove alice's key");
    let send = spawn_send(&sb, &src2, &[]);
    wait_until(TIMEOUT, "alice's new key", || published_key(&sb, SENDER).is_some_and(|k| k.fingerprint() != old));
    let new = published_key(&sb, SENDER).expect("key").fingerprint();
    let r = spawn_recv(&sb, &dir, &[]).wait();
    assert_key_refused(&r, &old, &new);
    assert_eq!(entries(&dir), vec!["one.txt".to_owned()], "nothing received with a changed key");
    // Still refused on a second try.
    assert_key_refused(&spawn_recv(&sb, &dir, &[]).wait(), &old, &new);

    // Accepted deliberately: the transfer goes through.
    let r = spawn_recv(&sb, &dir, &["--accept-new-key", "alice"]).wait();
    r.expect_ok();
    assert!(r.stderr.contains(&format!("accepted the new key of alice: fingerprint {new}")), "{}", r.describe());
    send.wait().expect_ok();
    assert_eq!(std::fs::read(dir.join("two.txt")).expect("received"), b"second file\n");

    // Mallory publishes her key under alice's id: refused, naming both.
    let mallory = Identity::from_seed(b"mallory's seed, for this test...");
    publish_key(&sb, SENDER, mallory.public());
    let r = spawn_recv(&sb, &dir, &["--timeout", "5"]).wait();
    assert_key_refused(&r, &new, &mallory.public().fingerprint());
}

// ---------------------------------------------------------------------------
// 4. Plaintext on one side only

/// Runs alice and bob with `send_extra` / `recv_extra`, `--timeout 3`:
/// neither gets anywhere; both exit 1.
fn mismatch(sb: &Sandbox, src: &Path, dir: &Path, send_extra: &[&str], recv_extra: &[&str]) -> (Finished, Finished) {
    let mut se = vec!["--timeout", "3"];
    se.extend_from_slice(send_extra);
    let mut re = vec!["--timeout", "3"];
    re.extend_from_slice(recv_extra);
    let send = spawn_send(sb, src, &se);
    let r = spawn_recv(sb, dir, &re).wait();
    let s = send.wait();
    for f in [&s, &r] {
        f.expect_code(1);
        assert!(f.stderr.contains("timed out"), "{}", f.describe());
    }
    let plain = if send_extra.contains(&"--insecure-plaintext") { &s } else { &r };
    assert!(plain.stderr.contains("WARNING: --insecure-plaintext"), "{}", plain.describe());
    assert!(!r.stderr.contains("offered"), "bob took an offer\n{}", r.describe());
    assert_eq!(entries(dir), Vec::<String>::new(), "bob created a file");
    (s, r)
}

/// Removes both outboxes' files and the resume state (keys stay).
fn reset(sb: &Sandbox) {
    for d in [sb.outbox(SENDER, RECEIVER), sb.outbox(RECEIVER, SENDER), sb.state.clone()] {
        for f in files_under(&d) {
            std::fs::remove_file(f).expect("clean");
        }
    }
}

/// What happens: the transfer never starts and both sides time out (exit
/// 1). On first contact the secure side waits for the other's key, which a
/// plaintext side never publishes: its timeout says so, with the likely
/// cause. Once both keys are known the side that reads the other's files
/// says why it refuses them, in one warning.
#[test]
fn plaintext_on_one_side_only_does_not_proceed() {
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join("data.bin");
    random_file(&src, 100 * KIB, 7);
    let dir = sb.mkdir("dl");

    let (s, r) = mismatch(&sb, &src, &dir, &["--insecure-plaintext", "-vv"], &["-vv"]);
    eprintln!("plaintext sender, first contact:\n{}\n{}", s.describe(), r.describe());
    let hint = "waiting for the key of alice (which publishes none if it runs with --insecure-plaintext)";
    assert!(r.stderr.contains(hint), "{}", r.describe());
    assert!(!sb.store.join(SENDER).join(KEY_FILE).exists(), "a plaintext side publishes no key");
    reset(&sb);
    std::fs::remove_file(sb.store.join(RECEIVER).join(KEY_FILE)).expect("bob's key from the first run");
    let (s, r) = mismatch(&sb, &src, &dir, &["-vv"], &["--insecure-plaintext", "-vv"]);
    eprintln!("plaintext receiver, first contact:\n{}\n{}", s.describe(), r.describe());
    let hint = "waiting for the key of bob (which publishes none if it runs with --insecure-plaintext)";
    assert!(s.stderr.contains(hint), "{}", s.describe());

    // Bob's key is known now (from the first run); alice's too.
    publish_key(&sb, RECEIVER, identity(&sb, RECEIVER).public());
    assert!(published_key(&sb, SENDER).is_some());
    reset(&sb);
    // At the default level: one warning, however often the file is read.
    let warned = |f: &Finished, why: &str| f.stderr_lines().into_iter().filter(|l| l.contains(why)).count();
    let (_, r) = mismatch(&sb, &src, &dir, &["--insecure-plaintext"], &[]);
    let why = "plaintext message refused: encryption is on here (does the peer run with --insecure-plaintext?)";
    assert_eq!(warned(&r, why), 1, "{}", r.describe());
    assert!(r.stderr.contains(" WARN "), "{}", r.describe());
    reset(&sb);
    let (_, r) = mismatch(&sb, &src, &dir, &[], &["--insecure-plaintext"]);
    assert_eq!(warned(&r, "encrypted message, but this side runs with --insecure-plaintext"), 1, "{}", r.describe());
}

/// A transfer interrupted in one mode and run again in the other starts
/// over and completes (it used to resume the other mode's session, whose
/// messages the peer refuses, and stall).
fn switch_modes(test: &str, first: &[&'static str], second: &[&'static str]) {
    let seed = dmp_testkit::seed(test);
    let sb = Sandbox::new();
    let src = sb.mkdir("src").join("data.bin");
    random_file(&src, 16 * MIB, seed);
    let dir = sb.mkdir("dl");
    let with = |flags: &[&'static str], extra: &[&'static str]| [flags, extra].concat();
    let send = spawn_send(&sb, &src, &with(first, &["-b", "256k"]));
    let recv = spawn_recv(&sb, &dir, first);
    wait_until(TIMEOUT, "a quarter of the file", || part_len(&dir) >= 4 * MIB);
    crash(recv);
    crash(send);
    let send = spawn_send(&sb, &src, &with(second, &["-b", "256k", "--timeout", "20"]));
    spawn_recv(&sb, &dir, &with(second, &["--timeout", "20"])).wait().expect_ok();
    send.wait().expect_ok();
    assert_eq!(sha256_file(&dir.join("data.bin")), sha256_file(&src));
}

#[test]
fn interrupted_in_plaintext_then_run_encrypted() {
    switch_modes("interrupted_in_plaintext_then_run_encrypted", &["--insecure-plaintext"], &[]);
}

#[test]
fn interrupted_encrypted_then_run_in_plaintext() {
    switch_modes("interrupted_encrypted_then_run_in_plaintext", &[], &["--insecure-plaintext"]);
}

/// A stale key file of the sender (an old install's) sits in the store when
/// the receiver first meets it: the receiver pins that key. When the sender
/// then publishes its real key, nothing it sends opens; the receiver looks
/// at the published key again and stops with the changed-key error instead
/// of waiting forever (as it did before).
#[test]
fn a_pin_taken_from_a_stale_key_file_is_reported_not_waited_on() {
    let sb = Sandbox::new();
    let src = sb.path("data.bin");
    random_file(&src, 300 * KIB, 7);
    let dir = sb.mkdir("in");
    let old = Identity::from_seed(b"an old install of alice, long gone");
    publish_key(&sb, SENDER, old.public());
    let recv = spawn_recv(&sb, &dir, &["--timeout", "60"]);
    wait_until(Duration::from_secs(30), "the receiver to pin the stale key", || {
        std::fs::read_to_string(sb.config.join("known_peers")).is_ok_and(|t| t.contains(&old.public().to_hex()))
    });
    let send = spawn_send(&sb, &src, &["--timeout", "60"]);
    let started = Instant::now();
    let f = recv.wait();
    assert_eq!(f.code, Some(1), "{}", f.describe());
    assert!(f.stderr.contains("the key of alice changed"), "{}", f.describe());
    assert!(started.elapsed() < Duration::from_secs(30), "reported after {:?}", started.elapsed());
    assert!(entries(&dir).is_empty(), "nothing written: {:?}", entries(&dir));
    drop(send);
}
