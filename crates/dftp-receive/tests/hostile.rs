//! Hostile input: a table of named cases, each crafting store contents or a
//! command line and running the real tools against it.
//!
//! - `plant` cases write files into the store as someone who can write it
//!   (envelopes built with the crate's own wire and crypto code, then
//!   broken on purpose; symlinks; directories, FIFOs and huge files where
//!   files should be) and run `dftp-receive alice bob DIR --timeout 2 -q`
//!   alone. It must ignore them (and time out) or refuse them with one
//!   clear line, and never accept anything that was not sealed by alice.
//! - `live` cases plant junk, then run a real transfer beside it: it must
//!   complete byte-identical (or, where noted, fail with one clear line).
//! - `ping` cases plant junk where a ping server looks for clients (the
//!   store root, client outboxes), then ping it twice: both succeed.
//! - `cli` cases run a tool with a bad command line: exit 2, one line.
//!
//! Every case also asserts: no panic (exit code not 101, no "panicked"),
//! no control or escape character on stderr, no file created or changed
//! outside DIR, the tools' own outboxes and the state and config
//! directories (a canary directory beside the store stays untouched), and
//! DIR holds nothing but the received file or the receiver's partial file.
//!
//! The cases run on a few threads; the count is printed at the end.

use dmp_core::PeerId;
use dmp_core::crypto::{INFO_CHUNK, INFO_MSG, Identity, PeerCrypto, os_rng};
use dmp_core::keys::{KEY_FILE, key_file_body, load_or_create_identity};
use dmp_core::proto::dftp::{chunk_aad, object_digest};
use dmp_core::proto::dftp_msg::{ChunkMsg, DoneMsg, Offer, Reply, chunk_object_name};
use dmp_core::proto::mailbox::msg_name;
use dmp_core::wire::{Envelope, FLAG_ENCRYPTED, Kind, sha256};
use dmp_testkit::{Finished, Sandbox, entries, files_under, random_file, sha256_file};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SENDER: &str = "alice";
const RECEIVER: &str = "bob";
const SESSION: u64 = 0x0123_4567_89ab_cdef;
const TRANSFER: &str = "00000000000000aa";
/// What a planted offer announces unless a case says otherwise.
const SIZE: u64 = 3000;
const BLOCK: u64 = 1024;

fn peer(s: &str) -> PeerId {
    PeerId::new(s).expect("valid id")
}

// ---------------------------------------------------------------------------
// A case's world

struct Ctx {
    sb: Sandbox,
    /// DIR, inside `outer`.
    dir: PathBuf,
    outer: PathBuf,
    /// A directory beside the store with a canary file: a symlink in the
    /// store may point here; nothing may change in it.
    victim: PathBuf,
    /// Seals alice → bob.
    a2b: PeerCrypto,
    /// The bytes of the file a planted transfer carries.
    data: Vec<u8>,
    /// Its sealed chunk objects (name, digest, bytes), sealed once: every
    /// seal draws a fresh nonce, so sealing again names another object.
    chunks: Vec<(String, String, Vec<u8>)>,
}

const CANARY: &[u8] = b"canary: nothing may touch this file\n";

impl Ctx {
    fn new() -> Ctx {
        let sb = Sandbox::new();
        let outer = sb.mkdir("outer");
        let dir = sb.mkdir("outer/dl");
        let victim = sb.mkdir("victim");
        std::fs::write(victim.join("canary"), CANARY).expect("canary");
        let alice = load_or_create_identity(&sb.config, &peer(SENDER)).expect("identity").0;
        let bob = load_or_create_identity(&sb.config, &peer(RECEIVER)).expect("identity").0;
        put_file(&sb.store.join(SENDER), KEY_FILE, &key_file_body(&peer(SENDER), alice.public()));
        let a2b = PeerCrypto::new(alice, bob.public().clone(), os_rng());
        let mut data = vec![0u8; SIZE as usize];
        fastrand::Rng::with_seed(7).fill(&mut data);
        let chunks = (0..SIZE.div_ceil(BLOCK))
            .map(|index| {
                let off = index * BLOCK;
                let len = BLOCK.min(SIZE - off);
                let plain = &data[off as usize..(off + len) as usize];
                let aad = chunk_aad(&peer(SENDER), &peer(RECEIVER), TRANSFER, index, len);
                let obj = a2b.seal(INFO_CHUNK, &aad, plain);
                let digest = object_digest(&obj, true);
                (chunk_object_name(index, &digest), digest, obj)
            })
            .collect();
        Ctx { sb, dir, outer, victim, a2b, data, chunks }
    }

    /// alice's outbox towards bob.
    fn a2b_dir(&self) -> PathBuf {
        self.sb.outbox(SENDER, RECEIVER)
    }

    fn env(&self, kind: Kind, seq: u64, payload: Vec<u8>) -> Envelope {
        Envelope {
            flags: 0,
            kind,
            sender: peer(SENDER),
            recipient: peer(RECEIVER),
            session: SESSION,
            seq,
            base: 1,
            payload,
        }
    }

    /// `env` sealed by alice for bob, encoded.
    fn seal(&self, mut env: Envelope) -> Vec<u8> {
        env.flags |= FLAG_ENCRYPTED;
        env.payload = self.a2b.seal(INFO_MSG, &env.aad(), &env.payload);
        env.encode()
    }

    /// Writes a sealed message of alice's under its proper name.
    fn msg(&self, seq: u64, kind: Kind, payload: Vec<u8>) {
        let bytes = self.seal(self.env(kind, seq, payload));
        put_file(&self.a2b_dir(), &msg_name(SESSION, seq), &bytes);
    }

    /// Writes raw bytes as alice's message `seq`.
    fn raw_msg(&self, seq: u64, bytes: &[u8]) {
        put_file(&self.a2b_dir(), &msg_name(SESSION, seq), bytes);
    }

    /// alice's head: session [`SESSION`], base 1.
    fn head(&self) {
        let bytes = self.seal(self.env(Kind::Head, 0, Vec::new()));
        put_file(&self.a2b_dir(), "head", &bytes);
    }

    fn offer_with(&self, name: &str, size: u64, block_size: u64) -> Vec<u8> {
        json(&Offer { transfer: TRANSFER.into(), name: name.into(), size, block_size })
    }

    /// head + a good offer of `data.bin` ([`SIZE`] bytes, [`BLOCK`]-byte chunks) as message 1.
    fn offer(&self) {
        self.head();
        self.msg(1, Kind::Offer, self.offer_with("data.bin", SIZE, BLOCK));
    }

    /// The sealed chunk object of chunk `index` of the planted file, its
    /// name and digest (not written).
    fn chunk_object(&self, index: u64) -> (String, String, Vec<u8>) {
        self.chunks[index as usize].clone()
    }

    /// The chunk message for chunk `index` as a correct sender would write it.
    fn chunk_msg(&self, index: u64) -> ChunkMsg {
        let (object, sha256, _) = self.chunk_object(index);
        let off = index * BLOCK;
        ChunkMsg { transfer: TRANSFER.into(), index, offset: off, len: BLOCK.min(SIZE - off), sha256, object }
    }

    /// Writes chunk object `index` into alice's outbox.
    fn put_chunk(&self, index: u64) -> String {
        let (name, _, obj) = self.chunk_object(index);
        put_file(&self.a2b_dir(), &name, &obj);
        name
    }

    /// Whether bob has written a refusal or an abort for alice.
    fn replied_no(&self) -> bool {
        let dir = self.sb.outbox(RECEIVER, SENDER);
        entries(&dir).iter().filter(|n| n.ends_with(".msg")).any(|n| {
            let Ok(b) = std::fs::read(dir.join(n)) else { return false };
            let Ok(mut env) = Envelope::decode(&b, Some(&peer(SENDER))) else { return false };
            let Ok(p) = self.a2b.open(INFO_MSG, &env.aad(), &env.payload) else { return false };
            env.payload = p;
            matches!(env.kind, Kind::Refuse | Kind::Abort)
        })
    }

    /// `rel` below the store.
    fn store(&self, rel: &str) -> PathBuf {
        self.sb.store.join(rel)
    }
}

fn json(v: &impl Serializable) -> Vec<u8> {
    v.to_json()
}

/// The DFTP message types a case serializes.
trait Serializable {
    fn to_json(&self) -> Vec<u8>;
}
macro_rules! serializable {
    ($($t:ty),*) => {$(impl Serializable for $t {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("json")
        }
    })*};
}
serializable!(Offer, ChunkMsg, DoneMsg, Reply);

/// Writes `dir/name` under a temporary name, then renames it into place.
fn put_file(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("directory");
    let tmp = dir.join(format!(".~test-{}.tmp", fastrand::u64(..)));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

/// Recomputes both checksums of an encoded envelope after its header or
/// payload was altered, so that only the altered field can be objected to.
fn rehash(mut b: Vec<u8>) -> Vec<u8> {
    let (s, r) = (b[7] as usize, b[8] as usize);
    let p = u32::from_be_bytes(b[36..40].try_into().expect("4 bytes")) as usize;
    let start = 72 + s + r;
    if b.len() == start + p + 32 {
        let h = sha256(&b[start..start + p]);
        b[40..72].copy_from_slice(&h);
    }
    let n = b.len();
    let h = sha256(&b[..n - 32]);
    b[n - 32..].copy_from_slice(&h);
    b
}

fn symlink(target: &Path, link: &Path) {
    std::fs::create_dir_all(link.parent().expect("parent")).expect("directory");
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("directory");
    let st = std::process::Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

// ---------------------------------------------------------------------------
// The table

/// What a case must end in (besides the checks every case gets).
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The receiver ignores what was planted: it times out (exit 1) and
    /// never announces an offer.
    Ignored,
    /// Exit 1 or 2 with one `error:` line containing the text.
    Error(&'static str),
    /// The real transfer completes byte-identical.
    Completes,
    /// Exit 2 with one `error:` line containing the text.
    Usage(&'static str),
}

enum Kind2 {
    /// Plant, then run the receiver alone.
    Plant(fn(&Ctx)),
    /// Plant, then run a real transfer.
    Live(fn(&Ctx)),
    /// A tool and its arguments (after the tool name).
    Cli(&'static str, fn(&Ctx) -> Vec<OsString>),
    /// Plant, then run a ping server (bob, which lists the store root for
    /// clients) and a client (alice) pinging it twice.
    Ping(fn(&Ctx)),
}

struct Case {
    name: &'static str,
    what: Kind2,
    expect: Expect,
}

fn plant(name: &'static str, expect: Expect, f: fn(&Ctx)) -> Case {
    Case { name, what: Kind2::Plant(f), expect }
}
fn live(name: &'static str, expect: Expect, f: fn(&Ctx)) -> Case {
    Case { name, what: Kind2::Live(f), expect }
}
fn ping(name: &'static str, f: fn(&Ctx)) -> Case {
    Case { name, what: Kind2::Ping(f), expect: Expect::Completes }
}
fn cli(name: &'static str, tool: &'static str, expect: &'static str, f: fn(&Ctx) -> Vec<OsString>) -> Case {
    Case { name, what: Kind2::Cli(tool, f), expect: Expect::Usage(expect) }
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// `RECEIVER SENDER FILE --store STORE` plus `extra`, for dftp-send.
fn send_cli(c: &Ctx, extra: &[&str]) -> Vec<OsString> {
    let file = c.sb.path("src/small.bin");
    let mut v =
        vec![RECEIVER.into(), SENDER.into(), file.into_os_string(), "--store".into(), c.sb.store.clone().into()];
    v.extend(os(extra));
    v
}

/// `SENDER RECEIVER DIR --store STORE` plus `extra`, for dftp-receive.
fn recv_cli(c: &Ctx, extra: &[&str]) -> Vec<OsString> {
    let mut v = vec![SENDER.into(), RECEIVER.into(), c.dir.clone().into(), "--store".into(), c.sb.store.clone().into()];
    v.extend(os(extra));
    v
}

/// `bob alice --store STORE` plus `extra`, for dmp-ping-client.
fn ping_cli(c: &Ctx, extra: &[&str]) -> Vec<OsString> {
    let mut v = vec![RECEIVER.into(), SENDER.into(), "--store".into(), c.sb.store.clone().into()];
    v.extend(os(extra));
    v
}

fn with_ids(c: &Ctx, tool: &str, a: &str, b: &str) -> Vec<OsString> {
    let target = if tool == "send" { c.sb.path("src/small.bin") } else { c.dir.clone() };
    vec![a.into(), b.into(), target.into_os_string(), "--store".into(), c.sb.store.clone().into()]
}

fn cases() -> Vec<Case> {
    use Expect::*;
    vec![
        // ---- envelopes: garbage, truncated, oversized, wrong fields ----
        plant("msg_random_garbage", Ignored, |c| {
            c.head();
            let mut g = vec![0u8; 5000];
            fastrand::Rng::with_seed(1).fill(&mut g);
            c.raw_msg(1, &g);
        }),
        plant("msg_empty_file", Ignored, |c| {
            c.head();
            c.raw_msg(1, b"");
        }),
        plant("msg_truncated_half", Ignored, |c| {
            c.head();
            let b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            c.raw_msg(1, &b[..b.len() / 2]);
        }),
        plant("msg_truncated_header", Ignored, |c| {
            c.head();
            let b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            c.raw_msg(1, &b[..40]);
        }),
        plant("msg_trailing_bytes", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b.extend_from_slice(b"trailing");
            c.raw_msg(1, &b);
        }),
        plant("msg_oversized_file_3_mib", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b.resize(3 << 20, 0);
            c.raw_msg(1, &b);
        }),
        plant("msg_declared_payload_4_gib", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_sparse_file_1_tib", Ignored, |c| {
            c.head();
            let p = c.a2b_dir().join(msg_name(SESSION, 1));
            let f = std::fs::File::create(p).expect("create");
            f.set_len(1 << 40).expect("sparse 1 TiB");
        }),
        plant("msg_wrong_magic", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[1] = b'X';
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_version_2", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[4] = 2;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_version_0", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[4] = 0;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_unknown_flag", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[5] |= 0x80;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_unknown_kind", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[6] = 0x7f;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_reserved_bytes_set", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[10] = 1;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_sender_length_zero", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[7] = 0;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_sender_length_255", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[7] = 255;
            c.raw_msg(1, &rehash(b));
        }),
        plant("msg_payload_checksum_wrong", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[41] ^= 1;
            let n = b.len();
            let h = sha256(&b[..n - 32]);
            b[n - 32..].copy_from_slice(&h);
            c.raw_msg(1, &b);
        }),
        plant("msg_frame_checksum_wrong", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            let n = b.len();
            b[n - 1] ^= 1;
            c.raw_msg(1, &b);
        }),
        plant("msg_wrong_recipient", Ignored, |c| {
            c.head();
            let mut e = c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK));
            e.recipient = peer("carol");
            c.raw_msg(1, &c.seal(e));
        }),
        plant("msg_wrong_sender", Ignored, |c| {
            c.head();
            let mut e = c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK));
            e.sender = peer("mallory");
            c.raw_msg(1, &c.seal(e));
        }),
        plant("msg_seq_disagrees_with_name", Ignored, |c| {
            c.head();
            let b = c.seal(c.env(Kind::Offer, 7, c.offer_with("data.bin", SIZE, BLOCK)));
            c.raw_msg(1, &b);
        }),
        plant("msg_session_disagrees_with_name", Ignored, |c| {
            c.head();
            let mut e = c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK));
            e.session = SESSION + 1;
            c.raw_msg(1, &c.seal(e));
        }),
        plant("msg_sealed_by_a_third_party", Ignored, |c| {
            c.head();
            let bob = load_or_create_identity(&c.sb.config, &peer(RECEIVER)).expect("identity").0;
            let mallory = PeerCrypto::new(
                Identity::from_seed(b"mallory's seed, for this test..."),
                bob.public().clone(),
                os_rng(),
            );
            let mut e = c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK));
            e.flags |= FLAG_ENCRYPTED;
            e.payload = mallory.seal(INFO_MSG, &e.aad(), &e.payload);
            c.raw_msg(1, &e.encode());
        }),
        plant("msg_plaintext_to_a_secure_receiver", Ignored, |c| {
            c.head();
            c.raw_msg(1, &c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)).encode());
        }),
        plant("msg_sealed_header_altered_after_sealing", Ignored, |c| {
            c.head();
            let mut b = c.seal(c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK)));
            b[28..36].copy_from_slice(&5u64.to_be_bytes()); // base, bound by the AAD
            c.raw_msg(1, &rehash(b));
        }),
        // ---- head and sequence numbers ----
        plant("head_garbage", Ignored, |c| {
            put_file(&c.a2b_dir(), "head", b"\x89DMP garbage head");
            c.msg(1, Kind::Offer, c.offer_with("data.bin", SIZE, BLOCK));
        }),
        plant("head_base_u64_max", Ignored, |c| {
            let mut e = c.env(Kind::Head, 0, Vec::new());
            e.base = u64::MAX;
            put_file(&c.a2b_dir(), "head", &c.seal(e));
            c.msg(1, Kind::Offer, c.offer_with("data.bin", SIZE, BLOCK));
        }),
        plant("head_session_u64_max_seq_u64_max", Ignored, |c| {
            let mut e = c.env(Kind::Head, u64::MAX, Vec::new());
            e.session = u64::MAX;
            e.base = u64::MAX;
            put_file(&c.a2b_dir(), "head", &c.seal(e));
        }),
        plant("head_for_another_recipient", Ignored, |c| {
            let mut e = c.env(Kind::Head, 0, Vec::new());
            e.recipient = peer("carol");
            put_file(&c.a2b_dir(), "head", &c.seal(e));
            c.msg(1, Kind::Offer, c.offer_with("data.bin", SIZE, BLOCK));
        }),
        plant("sequence_gap_first_message_missing", Ignored, |c| {
            c.head();
            c.msg(2, Kind::Offer, c.offer_with("data.bin", SIZE, BLOCK));
            c.msg(3, Kind::Offer, c.offer_with("data.bin", SIZE, BLOCK));
        }),
        plant("message_seq_u64_max", Ignored, |c| {
            c.head();
            c.msg(u64::MAX, Kind::Offer, c.offer_with("data.bin", SIZE, BLOCK));
        }),
        plant("replayed_older_session", Ignored, |c| {
            c.head();
            // Messages of an older session than the head's: a replay.
            let mut e = c.env(Kind::Offer, 1, c.offer_with("data.bin", SIZE, BLOCK));
            e.session = SESSION - 1;
            put_file(&c.a2b_dir(), &msg_name(SESSION - 1, 1), &c.seal(e));
        }),
        plant("second_offer_with_another_transfer", Ignored, |c| {
            c.offer();
            let o = Offer { transfer: "00000000000000bb".into(), name: "other.bin".into(), size: 5, block_size: 1 };
            c.msg(2, Kind::Offer, json(&o));
        }),
        plant("wrong_direction_kinds_accept_finished_ack_pong", Ignored, |c| {
            c.offer();
            let r = json(&Reply {
                transfer: TRANSFER.into(),
                reason: None,
                sha256: Some("0".repeat(64)),
                resumable: false,
            });
            c.msg(2, Kind::Accept, r.clone());
            c.msg(3, Kind::Finished, r);
            c.msg(4, Kind::Pong, vec![0; 8]);
        }),
        // ---- offers: absurd numbers, bad payloads ----
        plant("offer_size_u64_max", Error("chunks"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("data.bin", u64::MAX, 64 << 20));
        }),
        plant("offer_block_size_0", Error("block size"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("data.bin", SIZE, 0));
        }),
        plant("offer_block_size_1_gib", Error("block size"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("data.bin", SIZE, 1 << 30));
        }),
        plant("offer_2_pow_40_one_byte_chunks", Error("chunks"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("data.bin", 1 << 40, 1));
        }),
        plant("offer_transfer_id_not_hex", Error("transfer"), |c| {
            c.head();
            let o =
                Offer { transfer: "../../../etc/pw".into(), name: "data.bin".into(), size: SIZE, block_size: BLOCK };
            c.msg(1, Kind::Offer, json(&o));
        }),
        plant("offer_payload_not_json", Error("malformed offer"), |c| {
            c.head();
            c.msg(1, Kind::Offer, b"{\"transfer\": \"00000000000000aa\", \"name\": ".to_vec());
        }),
        plant("offer_negative_size", Error("malformed offer"), |c| {
            c.head();
            c.msg(
                1,
                Kind::Offer,
                br#"{"transfer":"00000000000000aa","name":"data.bin","size":-1,"block_size":1024}"#.to_vec(),
            );
        }),
        plant("offer_payload_1_mib_name", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with(&"n".repeat((1 << 20) - 200), SIZE, BLOCK));
        }),
        // ---- offers: hostile names ----
        plant("name_parent_traversal", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("../../victim/canary", SIZE, BLOCK));
        }),
        plant("name_absolute_path", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("/etc/passwd", SIZE, BLOCK));
        }),
        plant("name_backslash_traversal", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("..\\..\\x", SIZE, BLOCK));
        }),
        plant("name_dot", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with(".", SIZE, BLOCK));
        }),
        plant("name_empty", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("", SIZE, BLOCK));
        }),
        plant("name_terminal_title_escape", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("\u{1b}]0;pwned\u{7}x.txt", SIZE, BLOCK));
        }),
        plant("name_csi_clear_screen", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("a\u{1b}[2Jb", SIZE, BLOCK));
        }),
        plant("name_c1_csi", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("a\u{9b}31mb", SIZE, BLOCK));
        }),
        plant("name_bidi_override", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("invoice\u{202e}fdp.exe", SIZE, BLOCK));
        }),
        plant("name_nul_byte", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("a\0b", SIZE, BLOCK));
        }),
        plant("name_windows_reserved", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("nul.txt", SIZE, BLOCK));
        }),
        plant("name_256_bytes", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with(&"x".repeat(256), SIZE, BLOCK));
        }),
        plant("name_trailing_dot", Error("name"), |c| {
            c.head();
            c.msg(1, Kind::Offer, c.offer_with("data.", SIZE, BLOCK));
        }),
        // ---- chunks: absurd sizes and offsets, traversal in object names ----
        plant("chunk_before_offer", Error("chunk before any accepted offer"), |c| {
            c.head();
            c.put_chunk(0);
            c.msg(1, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("chunk_offset_wrong", Error("chunk"), |c| {
            c.offer();
            c.put_chunk(0);
            let mut m = c.chunk_msg(0);
            m.offset = 1 << 40;
            c.msg(2, Kind::Chunk, json(&m));
        }),
        plant("chunk_len_larger_than_block", Error("chunk"), |c| {
            c.offer();
            c.put_chunk(0);
            let mut m = c.chunk_msg(0);
            m.len = u64::MAX;
            c.msg(2, Kind::Chunk, json(&m));
        }),
        plant("chunk_index_beyond_the_file", Error("chunk"), |c| {
            c.offer();
            let mut m = c.chunk_msg(0);
            m.index = u64::MAX / BLOCK + 1;
            c.msg(2, Kind::Chunk, json(&m));
        }),
        plant("chunk_out_of_order", Error("chunk"), |c| {
            c.offer();
            c.put_chunk(2);
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(2)));
        }),
        plant("chunk_object_name_traversal", Error("chunk"), |c| {
            c.offer();
            let mut m = c.chunk_msg(0);
            m.object = "../../bob/alice/ack".into();
            c.msg(2, Kind::Chunk, json(&m));
        }),
        plant("chunk_object_absolute_path", Error("chunk"), |c| {
            c.offer();
            let mut m = c.chunk_msg(0);
            m.object = "/etc/passwd".into();
            c.msg(2, Kind::Chunk, json(&m));
        }),
        plant("chunk_for_another_transfer", Error("chunk"), |c| {
            c.offer();
            c.put_chunk(0);
            let mut m = c.chunk_msg(0);
            m.transfer = "00000000000000bb".into();
            c.msg(2, Kind::Chunk, json(&m));
        }),
        plant("chunk_object_truncated", Ignored, |c| {
            c.offer();
            let (name, _, obj) = c.chunk_object(0);
            put_file(&c.a2b_dir(), &name, &obj[..obj.len() / 2]);
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("chunk_object_is_a_directory", Ignored, |c| {
            c.offer();
            let (name, _, _) = c.chunk_object(0);
            std::fs::create_dir_all(c.a2b_dir().join(name)).expect("dir");
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("chunk_object_symlink_to_a_file_outside", Ignored, |c| {
            c.offer();
            let (name, _, _) = c.chunk_object(0);
            symlink(&c.victim.join("canary"), &c.a2b_dir().join(name));
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("chunk_object_symlink_to_dev_zero", Ignored, |c| {
            c.offer();
            let (name, _, _) = c.chunk_object(0);
            symlink(Path::new("/dev/zero"), &c.a2b_dir().join(name));
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("chunk_object_is_a_fifo", Ignored, |c| {
            c.offer();
            let (name, _, _) = c.chunk_object(0);
            mkfifo(&c.a2b_dir().join(name));
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("chunk_object_of_another_index", Ignored, |c| {
            c.offer();
            // Chunk 1's sealed bytes under chunk 0's name and digest claim.
            let (name0, _, _) = c.chunk_object(0);
            let (_, _, obj1) = c.chunk_object(1);
            put_file(&c.a2b_dir(), &name0, &obj1);
            c.msg(2, Kind::Chunk, json(&c.chunk_msg(0)));
        }),
        plant("done_with_a_wrong_file_hash", Error("sha-256 mismatch"), |c| {
            c.offer();
            for i in 0..3 {
                c.put_chunk(i);
                c.msg(2 + i, Kind::Chunk, json(&c.chunk_msg(i)));
            }
            c.msg(5, Kind::Done, json(&DoneMsg { transfer: TRANSFER.into(), sha256: "0".repeat(64) }));
        }),
        plant("done_before_the_chunks", Error(""), |c| {
            c.offer();
            let sha = hex::encode(sha256(&c.data));
            c.msg(2, Kind::Done, json(&DoneMsg { transfer: TRANSFER.into(), sha256: sha }));
        }),
        plant("abort_with_escape_sequences_in_its_reason", Error("abort"), |c| {
            c.offer();
            let r = Reply {
                transfer: TRANSFER.into(),
                reason: Some("\u{1b}]0;pwned\u{7}\u{1b}[2J gone\n".into()),
                sha256: None,
                resumable: false,
            };
            c.msg(2, Kind::Abort, json(&r));
        }),
        // ---- the store's shape: directories, files, symlinks, FIFOs where they do not belong ----
        plant("senders_outbox_is_a_file", Ignored, |c| {
            std::fs::write(c.store("alice/bob"), b"not a directory").expect("write");
        }),
        plant("senders_head_is_a_directory", Ignored, |c| {
            std::fs::create_dir_all(c.a2b_dir().join("head")).expect("dir");
        }),
        plant("senders_head_is_a_fifo", Ignored, |c| {
            mkfifo(&c.a2b_dir().join("head"));
        }),
        plant("senders_head_is_a_symlink_to_dev_zero", Ignored, |c| {
            symlink(Path::new("/dev/zero"), &c.a2b_dir().join("head"));
        }),
        plant("senders_key_is_garbage", Ignored, |c| {
            put_file(&c.store(SENDER), KEY_FILE, b"{\"v\":1,\"id\":\"alice\",\"x25519\":\"zz\"}");
        }),
        plant("senders_key_is_a_directory", Ignored, |c| {
            std::fs::remove_file(c.store("alice/key")).expect("remove");
            std::fs::create_dir_all(c.store("alice/key")).expect("dir");
        }),
        plant("senders_outbox_is_a_symlink_elsewhere", Ignored, |c| {
            std::fs::remove_dir_all(c.a2b_dir()).ok();
            symlink(&c.victim, &c.a2b_dir());
        }),
        plant("receivers_outbox_is_a_symlink_outside_the_store", Error(""), |c| {
            c.offer();
            symlink(&c.victim, &c.store("bob/alice"));
        }),
        plant("receivers_directory_is_a_symlink_outside_the_store", Error("symlink"), |c| {
            c.offer();
            symlink(&c.victim, &c.store("bob"));
        }),
        plant("receivers_ack_is_a_directory", Error(""), |c| {
            c.offer();
            std::fs::create_dir_all(c.store("bob/alice/ack")).expect("dir");
        }),
        plant("receivers_outbox_is_a_file", Error(""), |c| {
            c.offer();
            std::fs::create_dir_all(c.store("bob")).expect("dir");
            std::fs::write(c.store("bob/alice"), b"not a directory").expect("write");
        }),
        plant("known_peers_is_a_fifo", Error("not a regular file"), |c| {
            mkfifo(&c.sb.config.join("known_peers"));
        }),
        plant("partial_file_is_a_symlink_outside_dir", Error(""), |c| {
            c.offer();
            symlink(&c.victim.join("canary"), &c.dir.join(format!(".dftp-{TRANSFER}.part")));
        }),
        plant("partial_file_is_a_hard_link_to_a_file_outside_dir", Error(""), |c| {
            c.offer();
            std::fs::hard_link(c.victim.join("canary"), c.dir.join(format!(".dftp-{TRANSFER}.part"))).expect("link");
        }),
        plant("target_name_is_a_dangling_symlink", Error(""), |c| {
            c.offer();
            for i in 0..3 {
                c.put_chunk(i);
                c.msg(2 + i, Kind::Chunk, json(&c.chunk_msg(i)));
            }
            let sha = hex::encode(sha256(&c.data));
            c.msg(5, Kind::Done, json(&DoneMsg { transfer: TRANSFER.into(), sha256: sha }));
            symlink(&c.victim.join("new-file"), &c.dir.join("data.bin"));
        }),
        // ---- junk beside a real transfer ----
        live("junk_names_everywhere_in_the_store", Completes, |c| {
            for d in ["", "alice", "alice/bob", "bob", "bob/alice"] {
                let dir = c.store(d);
                for n in [
                    "x (conflicted copy 2026-01-02).msg",
                    "0123456789abcdef-0000000000000001.msg.sync-conflict-20260102-1",
                    "\u{1b}]0;pwned\u{7}",
                    "line\nbreak",
                    "..\u{202e}gpj.exe",
                    "0000000000-zz.chunk",
                    ".~dmp-stale.tmp",
                ] {
                    put_file(&dir, n, b"junk");
                }
                put_file(&dir, &"x".repeat(255), b"junk");
            }
        }),
        live("directories_named_like_protocol_files", Completes, |c| {
            let name = chunk_object_name(0, &"0".repeat(64));
            for d in ["alice/bob", "bob/alice"] {
                std::fs::create_dir_all(c.store(d).join(&name)).expect("dir");
                std::fs::create_dir_all(c.store(d).join(msg_name(1, 1))).expect("dir");
            }
        }),
        live("symlinks_in_the_store_to_outside", Completes, |c| {
            for d in ["alice/bob", "bob/alice"] {
                symlink(&c.victim.join("canary"), &c.store(d).join(chunk_object_name(0, &"1".repeat(64))));
                symlink(&c.victim, &c.store(d).join(msg_name(1, 1)));
                symlink(&c.victim.join("canary"), &c.store(d).join(".~dmp-x.tmp"));
            }
            symlink(&c.victim, &c.store("carol"));
        }),
        live("a_fifo_in_each_outbox", Completes, |c| {
            for d in ["alice/bob", "bob/alice"] {
                mkfifo(&c.store(d).join(chunk_object_name(0, &"2".repeat(64))));
            }
        }),
        live("stale_old_session_messages_in_both_outboxes", Completes, |c| {
            for (a, b) in [(SENDER, RECEIVER), (RECEIVER, SENDER)] {
                put_file(&c.sb.outbox(a, b), &msg_name(1, 1), b"\x89DMP stale");
                put_file(&c.sb.outbox(a, b), &msg_name(1, 2), &[0u8; 200]);
            }
        }),
        // ---- junk where a ping server looks for clients (the store root) ----
        ping("ping_server_root_with_hostile_names", |c| {
            for n in ["Bad\u{1b}[31m", "..", "...", ".hidden", "line\nbreak", "\u{202e}evil", "CON", "x y"] {
                let _ = std::fs::create_dir_all(c.store(n).join(RECEIVER));
            }
            std::fs::create_dir_all(c.store(&"a".repeat(65)).join(RECEIVER)).expect("dir");
            std::fs::create_dir_all(c.store(&"\u{e9}".repeat(100))).expect("dir");
        }),
        ping("ping_server_root_with_files_and_symlinks_for_peers", |c| {
            std::fs::write(c.store("carol"), b"a file where a peer directory should be").expect("write");
            symlink(&c.victim, &c.store("dave"));
            std::fs::create_dir_all(c.store("erin")).expect("dir");
            std::fs::write(c.store("erin/bob"), b"a file where an outbox should be").expect("write");
            symlink(&c.victim, &c.store("frank/bob"));
            mkfifo(&c.store("gina"));
        }),
        ping("ping_server_with_a_hostile_client_outbox", |c| {
            put_file(&c.store("mallory/bob"), "head", b"\x89DMPgarbage");
            put_file(&c.store("mallory/bob"), &msg_name(1, 1), &[0xffu8; 300]);
            put_file(&c.store("mallory"), KEY_FILE, b"{\"v\":1,\"id\":\"mallory\",\"x25519\":\"00\"}");
            mkfifo(&c.store("trudy/bob/head"));
        }),
        ping("ping_server_with_many_client_directories", |c| {
            for i in 0..300 {
                std::fs::create_dir_all(c.store(&format!("client-{i}")).join(RECEIVER)).expect("dir");
            }
        }),
        // ---- command lines ----
        cli("ping_client_count_words", "dmp-ping-client", "", |c| ping_cli(c, &["-c", "many"])),
        cli("ping_client_interval_negative", "dmp-ping-client", "", |c| ping_cli(c, &["-i", "-1"])),
        cli("ping_client_interval_nan", "dmp-ping-client", "", |c| ping_cli(c, &["-i", "NaN"])),
        cli("ping_client_wait_zero", "dmp-ping-client", "", |c| ping_cli(c, &["-W", "0"])),
        cli("ping_client_server_id_traversal", "dmp-ping-client", "", |c| {
            vec!["../bob".into(), SENDER.into(), "--store".into(), c.sb.store.clone().into()]
        }),
        cli("ping_server_id_upper_case", "dmp-ping-server", "", |c| {
            vec!["BOB".into(), "--store".into(), c.sb.store.clone().into()]
        }),
        cli("send_receiver_id_upper_case", "dftp-send", "", |c| with_ids(c, "send", "Bob", SENDER)),
        cli("send_sender_id_traversal", "dftp-send", "", |c| with_ids(c, "send", RECEIVER, "../alice")),
        cli("send_sender_id_empty", "dftp-send", "", |c| with_ids(c, "send", RECEIVER, "")),
        cli("send_sender_id_65_chars", "dftp-send", "", |c| with_ids(c, "send", RECEIVER, &"a".repeat(65))),
        cli("send_sender_id_leading_dot", "dftp-send", "", |c| with_ids(c, "send", RECEIVER, ".alice")),
        cli("send_receiver_id_with_escape", "dftp-send", "", |c| with_ids(c, "send", "b\u{1b}[2Job", SENDER)),
        cli("send_block_size_0", "dftp-send", "block", |c| send_cli(c, &["-b", "0"])),
        cli("send_block_size_1_tib", "dftp-send", "block", |c| send_cli(c, &["-b", "1024g"])),
        cli("send_block_size_negative", "dftp-send", "", |c| send_cli(c, &["-b", "-5"])),
        cli("send_block_size_overflow", "dftp-send", "", |c| send_cli(c, &["-b", "99999999999999999999999g"])),
        cli("send_window_0", "dftp-send", "window", |c| send_cli(c, &["--window", "0"])),
        cli("send_window_huge", "dftp-send", "window", |c| send_cli(c, &["--window", "18446744073709551616"])),
        cli("send_quota_below_block", "dftp-send", "quota", |c| send_cli(c, &["-b", "1m", "--quota", "1k"])),
        cli("send_timeout_negative", "dftp-send", "", |c| send_cli(c, &["--timeout", "-1"])),
        cli("send_timeout_nan", "dftp-send", "", |c| send_cli(c, &["--timeout", "NaN"])),
        cli("send_timeout_inf", "dftp-send", "", |c| send_cli(c, &["--timeout", "inf"])),
        cli("send_file_missing", "dftp-send", "", |c| {
            let mut v = send_cli(c, &[]);
            v[2] = c.sb.path("no-such-file").into();
            v
        }),
        cli("send_file_is_a_directory", "dftp-send", "not a regular file", |c| {
            let mut v = send_cli(c, &[]);
            v[2] = c.dir.clone().into();
            v
        }),
        cli("send_file_name_with_escape", "dftp-send", "control or escape", |c| {
            let p = c.sb.path("src/evil\u{1b}[2J.bin");
            std::fs::write(&p, b"x").expect("write");
            let mut v = send_cli(c, &[]);
            v[2] = p.into();
            v
        }),
        cli("send_file_name_not_utf8", "dftp-send", "not UTF-8", |c| {
            let mut raw = c.sb.path("src").into_os_string().into_vec();
            raw.extend_from_slice(b"/bad\xff.bin");
            let p = PathBuf::from(OsString::from_vec(raw));
            std::fs::write(&p, b"x").expect("write");
            let mut v = send_cli(c, &[]);
            v[2] = p.into();
            v
        }),
        cli("send_store_unknown_scheme", "dftp-send", "", |c| {
            let mut v = send_cli(c, &[]);
            v[4] = "ftp://127.0.0.1/x".into();
            v
        }),
        cli("send_store_url_without_host", "dftp-send", "", |c| {
            let mut v = send_cli(c, &[]);
            v[4] = "webdav://".into();
            v
        }),
        cli("send_unknown_flag", "dftp-send", "", |c| send_cli(c, &["--bogus"])),
        cli("recv_sender_id_upper_case", "dftp-receive", "", |c| with_ids(c, "recv", "Alice", RECEIVER)),
        cli("recv_receiver_id_slash", "dftp-receive", "", |c| with_ids(c, "recv", SENDER, "b/ob")),
        cli("recv_dir_missing", "dftp-receive", "", |c| {
            let mut v = recv_cli(c, &[]);
            v[2] = c.sb.path("no-such-dir").into();
            v
        }),
        cli("recv_dir_is_a_file", "dftp-receive", "not a directory", |c| {
            let p = c.sb.path("src/small.bin");
            let mut v = recv_cli(c, &[]);
            v[2] = p.into();
            v
        }),
        // ---- the local files the tools read: special files, never a hang ----
        cli("recv_config_file_is_a_fifo", "dftp-receive", "not a regular file", |c| {
            mkfifo(&c.sb.config.join("config.toml"));
            recv_cli(c, &[])
        }),
        cli("recv_config_file_is_dev_zero", "dftp-receive", "not a regular file", |c| {
            recv_cli(c, &["--config", "/dev/zero"])
        }),
        cli("recv_peers_file_is_a_fifo", "dftp-receive", "peers file", |c| {
            let p = c.sb.path("peers.fifo");
            mkfifo(&p);
            let mut v = recv_cli(c, &["--peers-file"]);
            v.push(p.into());
            v
        }),
        cli("recv_own_key_is_a_symlink_to_dev_zero", "dftp-receive", "not a regular file", |c| {
            let key = c.sb.config.join("keys/bob.key");
            std::fs::remove_file(&key).expect("remove");
            symlink(Path::new("/dev/zero"), &key);
            recv_cli(c, &[])
        }),
        cli("recv_own_key_is_a_dangling_symlink", "dftp-receive", "missing file", |c| {
            let key = c.sb.config.join("keys/bob.key");
            std::fs::remove_file(&key).expect("remove");
            symlink(&c.sb.path("no-such-key"), &key);
            recv_cli(c, &[])
        }),
        cli("recv_timeout_words", "dftp-receive", "", |c| recv_cli(c, &["--timeout", "soon"])),
        cli("recv_unknown_flag", "dftp-receive", "", |c| recv_cli(c, &["--overwrite=maybe"])),
        cli("recv_peer_outbox_bad", "dftp-receive", "", |c| recv_cli(c, &["--peer-outbox", "alice=file:///etc"])),
        cli("recv_peers_file_missing", "dftp-receive", "", |c| recv_cli(c, &["--peers-file", "/nonexistent/peers"])),
        // A settings file that never ends (/dev/zero, a pipe) was read
        // whole first: here 64 MiB of zeros stand for it.
        cli("recv_peers_file_endless", "dftp-receive", "too large (67108864 bytes, at most 1048576)", |c| {
            let p = c.sb.path("zeros-peers");
            std::fs::File::create(&p).unwrap().set_len(64 << 20).unwrap();
            recv_cli(c, &["--peers-file", p.to_str().unwrap()])
        }),
        cli("recv_config_endless", "dftp-receive", "too large (67108864 bytes, at most 1048576)", |c| {
            let p = c.sb.path("zeros-config");
            std::fs::File::create(&p).unwrap().set_len(64 << 20).unwrap();
            recv_cli(c, &["--config", p.to_str().unwrap()])
        }),
    ]
}

// ---------------------------------------------------------------------------
// Running a case

/// Every file below `dir` (symlinks not followed) with its content's hash
/// (or "dir"/"link"/"other").
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            let v = if t.is_dir() {
                todo.push(p.clone());
                "dir".to_owned()
            } else if t.is_symlink() {
                format!("link {}", std::fs::read_link(&p).map(|l| l.display().to_string()).unwrap_or_default())
            } else if t.is_file() {
                std::fs::read(&p).map(|b| hex::encode(sha256(&b))).unwrap_or_default()
            } else {
                "other".to_owned()
            };
            out.insert(p, v);
        }
    }
    out
}

/// Checks every case gets; returns the error line (if any) for the report.
fn common_checks(f: &Finished) -> Result<(), String> {
    if f.code == Some(101) || f.stderr.contains("panicked") {
        return Err(format!("panicked\n{}", f.describe()));
    }
    if f.signal.is_some() {
        return Err(format!("killed by a signal\n{}", f.describe()));
    }
    if f.stderr.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("control characters on stderr: {:?}", f.stderr));
    }
    Ok(())
}

fn error_line(f: &Finished) -> Result<String, String> {
    let lines = f.stderr_lines();
    let errs: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error")).collect();
    if errs.len() != 1 {
        return Err(format!("expected one error line\n{}", f.describe()));
    }
    Ok(errs[0].to_string())
}

fn run_case(case: &Case) -> Result<String, String> {
    let c = Ctx::new();
    let src = c.sb.mkdir("src").join("small.bin");
    random_file(&src, 200 * 1024 + 5, 11);
    // What the store and the sandbox hold before the tools run (the
    // planting included): afterwards, only the tools' own places may differ.
    let plant_fn = match case.what {
        Kind2::Plant(f) | Kind2::Live(f) | Kind2::Ping(f) => Some(f),
        Kind2::Cli(..) => None,
    };
    if let Some(f) = plant_fn {
        f(&c);
    }
    let cli_args = match &case.what {
        Kind2::Cli(_, f) => f(&c),
        _ => Vec::new(),
    };
    let before = snapshot(c.sb.root());
    let started = Instant::now();
    let (outcome, writers): (Result<String, String>, &[&str]) = match (&case.what, case.expect) {
        (Kind2::Plant(_), expect) => {
            let mut p = c.sb.spawn("dftp-receive", recv_cli(&c, &["--timeout", "2", "-q"]));
            // Play the sender's part of a refusal or an abort: read it and
            // remove alice's files, so that the receiver need not wait.
            let until = Instant::now() + dmp_testkit::TIMEOUT;
            let mut cleared = false;
            while p.is_running() && Instant::now() < until {
                if !cleared && c.replied_no() {
                    for f in files_under(&c.a2b_dir()) {
                        let _ = std::fs::remove_file(f);
                    }
                    cleared = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let f = p.wait();
            (judge(&f, expect), &["store/bob"])
        }
        (Kind2::Live(_), expect) => {
            let send = c.sb.spawn("dftp-send", send_cli(&c, &["-b", "64k", "--timeout", "20", "-q"]));
            let r = c.sb.run("dftp-receive", recv_cli(&c, &["--timeout", "20", "-q"]));
            let s = send.wait();
            let res = judge(&s, expect).and_then(|a| judge(&r, expect).map(|b| format!("{a}; {b}")));
            let res = res.and_then(|m| {
                if matches!(expect, Expect::Completes) && sha256_file(&c.dir.join("small.bin")) != sha256_file(&src) {
                    Err("the received file differs".to_owned())
                } else {
                    Ok(m)
                }
            });
            (res, &["store/alice", "store/bob"])
        }
        (Kind2::Cli(tool, _), expect) => {
            let f = c.sb.run(tool, &cli_args);
            (judge(&f, expect), &[])
        }
        (Kind2::Ping(_), expect) => {
            let store: OsString = c.sb.store.clone().into();
            let mut srv =
                c.sb.spawn("dmp-ping-server", [RECEIVER.into(), "--store".into(), store.clone(), "-q".into()]);
            let cl = c.sb.run(
                "dmp-ping-client",
                [
                    RECEIVER.into(),
                    SENDER.into(),
                    "-c".into(),
                    "2".into(),
                    "-i".into(),
                    "0.2".into(),
                    "-W".into(),
                    "20".into(),
                    "--store".into(),
                    store,
                ],
            );
            srv.signal("TERM");
            let sv = srv.wait();
            let replies = cl.stdout.lines().filter(|l| l.starts_with("reply from bob")).count();
            let res = judge(&cl, expect).and_then(|a| judge(&sv, expect).map(|b| format!("{a}; {b}")));
            let res = res.and_then(|m| {
                if replies == 2 {
                    Ok(format!("{m}; {replies} replies"))
                } else {
                    Err(format!("{replies} replies\n{}", cl.describe()))
                }
            });
            (res, &["store/alice", "store/bob"])
        }
    };
    let outcome = outcome?;
    // Nothing outside DIR, the writers' outboxes, state, config and logs changed.
    let after = snapshot(c.sb.root());
    let allowed = |p: &Path| {
        let rel = p.strip_prefix(c.sb.root()).expect("below the root");
        rel.starts_with("state")
            || rel.starts_with("config")
            || rel.starts_with("logs")
            || (rel.starts_with("outer/dl") && rel != Path::new("outer/dl"))
            || writers.iter().any(|w| rel.starts_with(w))
    };
    for (p, v) in &after {
        if before.get(p) != Some(v) && !allowed(p) {
            return Err(format!("{} was created or changed ({v})", p.display()));
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) && !allowed(p) && !p.starts_with(c.a2b_dir()) {
            return Err(format!("{} was removed", p.display()));
        }
    }
    if std::fs::read(c.victim.join("canary")).ok().as_deref() != Some(CANARY) {
        return Err("the canary outside the store changed".into());
    }
    assert_eq!(entries(&c.outer), vec!["dl".to_owned()]);
    // DIR: the received file, or at most the receiver's partial file.
    let in_dir = entries(&c.dir);
    let ok_dir = match case.expect {
        _ if matches!(case.what, Kind2::Ping(_)) => in_dir.is_empty(),
        Expect::Completes => in_dir == vec!["small.bin".to_owned()],
        _ => in_dir.iter().all(|n| n.starts_with(".dftp-") && n.ends_with(".part")) || planted_in_dir(case.name),
    };
    if !ok_dir {
        return Err(format!("DIR holds {in_dir:?}"));
    }
    let _ = files_under(&c.dir);
    Ok(format!("{outcome} ({:.1} s)", started.elapsed().as_secs_f64()))
}

/// Cases that plant something in DIR themselves.
fn planted_in_dir(name: &str) -> bool {
    name.starts_with("partial_file_is_a_") || name == "target_name_is_a_dangling_symlink"
}

fn judge(f: &Finished, expect: Expect) -> Result<String, String> {
    common_checks(f)?;
    match expect {
        Expect::Ignored => {
            let line = error_line(f)?;
            if f.code != Some(1) || !line.contains("timed out") {
                return Err(format!("expected to be ignored (a time-out, exit 1)\n{}", f.describe()));
            }
            if f.stderr.contains("offered") {
                return Err(format!("an offer was announced\n{}", f.describe()));
            }
            Ok(format!("ignored: {line}"))
        }
        Expect::Error(text) => {
            let line = error_line(f)?;
            if !matches!(f.code, Some(1) | Some(2)) || !line.to_lowercase().contains(text) {
                return Err(format!("expected exit 1 or 2 and an error with {text:?}\n{}", f.describe()));
            }
            Ok(format!("exit {:?}: {line}", f.code.unwrap_or(-1)))
        }
        Expect::Completes => {
            if f.code != Some(0) {
                return Err(format!("expected success\n{}", f.describe()));
            }
            Ok(format!("{} ok", f.label))
        }
        Expect::Usage(text) => {
            let lines = f.stderr_lines();
            if f.code != Some(2) || lines.len() != 1 || !lines[0].starts_with("error") || !lines[0].contains(text) {
                return Err(format!("expected exit 2 and one error line with {text:?}\n{}", f.describe()));
            }
            if !f.stdout.trim().is_empty() {
                return Err(format!("printed on stdout\n{}", f.describe()));
            }
            Ok(format!("exit 2: {}", lines[0]))
        }
    }
}

#[test]
fn hostile_corpus() {
    let started = Instant::now();
    let all = cases();
    let filter = std::env::var("DMP_HOSTILE_CASE").ok();
    let todo: Vec<&Case> = all.iter().filter(|c| filter.as_deref().is_none_or(|f| c.name.contains(f))).collect();
    let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len(), "case names are unique");
    let next = Mutex::new(todo.iter());
    let results: Mutex<Vec<(&str, Result<String, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                loop {
                    let Some(case) = next.lock().unwrap_or_else(|e| e.into_inner()).next().copied() else { break };
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case)))
                        .unwrap_or_else(|p| Err(format!("the case panicked: {p:?}")));
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((case.name, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(n, _)| *n);
    let mut failed = 0;
    for (name, r) in &results {
        match r {
            Ok(m) => eprintln!("ok   {name}: {m}"),
            Err(e) => {
                failed += 1;
                eprintln!("FAIL {name}: {e}");
            }
        }
    }
    let count = |f: fn(&Kind2) -> bool| todo.iter().filter(|c| f(&c.what)).count();
    eprintln!(
        "hostile inputs tried: {} ({} planted store contents, {} beside a live transfer, {} beside a ping \
         server, {} command lines); {failed} failed; {:.1} s",
        results.len(),
        count(|k| matches!(k, Kind2::Plant(_))),
        count(|k| matches!(k, Kind2::Live(_))),
        count(|k| matches!(k, Kind2::Ping(_))),
        count(|k| matches!(k, Kind2::Cli(..))),
        started.elapsed().as_secs_f64()
    );
    assert!(filter.is_some() || results.len() >= 50, "at least 50 cases");
    assert_eq!(failed, 0, "{failed} hostile cases failed (see above)");
}
