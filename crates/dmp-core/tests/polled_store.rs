//! What a party does on a store without change notification, where every
//! look is a request: how often the mailbox reads the peer's head, that it
//! stops fetching from a peer that has gone, and how the ping server finds
//! its clients (by a rate-limited listing, or registered up front because
//! their outbox is read-only HTTP).

use dmp_core::PeerId;
use dmp_core::proto::mailbox::{Link, LinkConfig, Op, OpResult, Output};
use dmp_core::proto::ping::{PingServer, ServerEvent};
use dmp_core::store::Key;
use dmp_core::wire::{Envelope, Kind};
use std::time::Duration;

fn id(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn key(s: &str) -> Key {
    Key::new(s.split('/')).unwrap()
}

/// The store operations among `outs`.
fn ops(outs: Vec<Output>) -> Vec<Op> {
    outs.into_iter()
        .filter_map(|o| match o {
            Output::Op(op) => Some(op),
            _ => None,
        })
        .collect()
}

fn gets(ops: &[Op]) -> Vec<String> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Get(k, _) => Some(k.to_string()),
            _ => None,
        })
        .collect()
}

fn head_of_b(session: u64) -> Vec<u8> {
    Envelope {
        flags: 0,
        kind: Kind::Head,
        sender: id("b"),
        recipient: id("a"),
        session,
        seq: 0,
        base: 1,
        payload: Vec::new(),
    }
    .encode()
}

#[test]
fn the_head_is_read_every_head_every_and_often_once_the_peer_is_gone() {
    let cfg = LinkConfig { head_every: Duration::from_secs(5), ..LinkConfig::default() };
    let mut l = Link::new(id("a"), id("b"), cfg, None, 7);
    l.wake(ms(0));
    let first = ops(l.take_outputs());
    assert!(gets(&first).contains(&"b/a/head".to_string()), "{first:?}");
    l.on_result(ms(0), OpResult::Listed(key("a/b"), Ok(Vec::new())));
    l.on_result(ms(0), OpResult::Got(key("b/a/head"), Ok(Some(head_of_b(9)))));
    let msg1 = "b/a/0000000000000009-0000000000000001.msg";
    assert!(gets(&ops(l.take_outputs())).contains(&msg1.to_string()));
    l.on_result(ms(1), OpResult::Got(key(msg1), Ok(None)));
    let _ = l.take_outputs();

    // Idle, session known: one request per look, the head every 5 s.
    l.wake(ms(1000));
    assert_eq!(gets(&ops(l.take_outputs())), [msg1]);
    l.on_result(ms(1000), OpResult::Got(key(msg1), Ok(None)));
    l.wake(ms(5000));
    let g = gets(&ops(l.take_outputs()));
    assert!(g.contains(&"b/a/head".to_string()) && g.contains(&msg1.to_string()), "{g:?}");
    l.on_result(ms(5000), OpResult::Got(key(msg1), Ok(None)));
    // An unchanged head fetches nothing more (the next name is fetched at
    // each look anyway).
    l.on_result(ms(5000), OpResult::Got(key("b/a/head"), Ok(Some(head_of_b(9)))));
    assert!(gets(&ops(l.take_outputs())).is_empty());
    l.wake(ms(10_000));
    let g = gets(&ops(l.take_outputs()));
    assert!(g.contains(&"b/a/head".to_string()) && g.contains(&msg1.to_string()), "{g:?}");
    l.on_result(ms(10_000), OpResult::Got(key(msg1), Ok(None)));

    // The head reads as absent: perhaps the peer finished, perhaps a flaky
    // read. Not gone yet (that takes several absent reads over a while), but
    // its head is now watched every 5 s / 16, for a new session.
    l.on_result(ms(10_000), OpResult::Got(key("b/a/head"), Ok(None)));
    assert!(!l.peer_gone(), "one absent read is not enough");
    let _ = l.take_outputs();
    l.wake(ms(10_100));
    assert!(!gets(&ops(l.take_outputs())).contains(&"b/a/head".to_string()), "head not due yet");
    l.wake(ms(10_400));
    assert!(gets(&ops(l.take_outputs())).contains(&"b/a/head".to_string()));
    // It comes back with a new session: followed at once.
    l.on_result(ms(10_400), OpResult::Got(key("b/a/head"), Ok(Some(head_of_b(10)))));
    assert!(!l.peer_gone());
    let g = gets(&ops(l.take_outputs()));
    assert!(g.contains(&"b/a/000000000000000a-0000000000000001.msg".to_string()), "{g:?}");
}

/// On a folder (head read at every wake) the head waits while the next
/// message is being fetched, so that nothing queues ahead of what that
/// message leads to; it is read as soon as a fetch finds nothing, so a
/// new or finished session is still seen at the next look.
#[test]
fn on_a_folder_the_head_is_read_once_a_fetch_finds_nothing() {
    // As the ping tools set it: the next message only, no read-ahead.
    let cfg = LinkConfig { readahead: 1, ..LinkConfig::default() };
    assert!(cfg.head_every.is_zero(), "the folder setting");
    let mut l = Link::new(id("a"), id("b"), cfg, None, 7);
    l.wake(ms(0));
    assert!(gets(&ops(l.take_outputs())).contains(&"b/a/head".to_string()), "first the head: no session yet");
    l.on_result(ms(0), OpResult::Listed(key("a/b"), Ok(Vec::new())));
    l.on_result(ms(0), OpResult::Got(key("b/a/head"), Ok(Some(head_of_b(9)))));
    let msg1 = "b/a/0000000000000009-0000000000000001.msg";
    assert_eq!(gets(&ops(l.take_outputs())), [msg1]);
    l.on_result(ms(1), OpResult::Got(key(msg1), Ok(None)));
    // That fetch found nothing: the head was not due (just read).
    assert!(gets(&ops(l.take_outputs())).is_empty());
    // A wake: the next message only ...
    l.wake(ms(2));
    assert_eq!(gets(&ops(l.take_outputs())), [msg1]);
    // ... and the head once it is not there.
    l.on_result(ms(2), OpResult::Got(key(msg1), Ok(None)));
    assert_eq!(gets(&ops(l.take_outputs())), ["b/a/head"]);
    l.on_result(ms(2), OpResult::Got(key("b/a/head"), Ok(Some(head_of_b(9)))));
    // A wake that finds the message: no head read behind it.
    l.wake(ms(3));
    assert_eq!(gets(&ops(l.take_outputs())), [msg1]);
    let m1 = Envelope {
        flags: 0,
        kind: Kind::Ping,
        sender: id("b"),
        recipient: id("a"),
        session: 9,
        seq: 1,
        base: 1,
        payload: vec![0; 8],
    }
    .encode();
    l.on_result(ms(3), OpResult::Got(key(msg1), Ok(Some(m1))));
    let after = gets(&ops(l.take_outputs()));
    let msg2 = "b/a/0000000000000009-0000000000000002.msg";
    assert!(!after.contains(&"b/a/head".to_string()) && after.contains(&msg2.to_string()), "{after:?}");
    // The peer restarted with a new session: the old one's next message
    // never comes; the head is read as soon as that fetch finds nothing,
    // and the new session followed.
    l.on_result(ms(4), OpResult::Got(key(msg2), Ok(None)));
    assert!(gets(&ops(l.take_outputs())).contains(&"b/a/head".to_string()));
    l.on_result(ms(4), OpResult::Got(key("b/a/head"), Ok(Some(head_of_b(10)))));
    let g = gets(&ops(l.take_outputs()));
    assert!(g.contains(&"b/a/000000000000000a-0000000000000001.msg".to_string()), "{g:?}");
}

#[test]
fn ping_server_lists_at_most_every_discover_every_and_serves_known_clients() {
    let mut s = PingServer::new(id("srv"), LinkConfig::default(), 5).with_discover_every(Duration::from_secs(5));
    // A client registered up front (its outbox is read over HTTP) is served
    // before any listing, and only once.
    assert!(s.add_client(ms(0), id("alice")));
    assert!(!s.add_client(ms(0), id("alice")));
    assert!(!s.add_client(ms(0), id("srv")), "never itself");
    assert_eq!(s.take_events(), [ServerEvent::NewClient(id("alice"))]);
    let lists = |ops: &[Op]| ops.iter().filter(|o| matches!(o, Op::List(k) if k.is_root())).count();
    s.wake(ms(0));
    let o = s.take_ops();
    assert_eq!(lists(&o), 1);
    assert!(gets(&o).contains(&"alice/srv/head".to_string()), "{o:?}");
    s.on_result(ms(1), OpResult::Listed(Key::root(), Ok(vec!["alice".into(), "srv".into(), "bob".into()])));
    // bob is served once its head towards me is there (one read).
    assert_eq!(gets(&s.take_ops()), ["bob/srv/head"]);
    assert!(s.take_events().is_empty());
    s.on_result(ms(1), OpResult::Got(key("bob/srv/head"), Ok(Some(b"head".to_vec()))));
    assert_eq!(s.take_events(), [ServerEvent::NewClient(id("bob"))]);
    let _ = s.take_ops();
    s.wake(ms(2000));
    assert_eq!(lists(&s.take_ops()), 0, "not again within 5 s");
    s.wake(ms(5000));
    assert_eq!(lists(&s.take_ops()), 1);
    assert_eq!(s.clients().map(|c| c.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
}
