//! The configuration file, with the real tools: where it is read from, what
//! overrides what (flags > environment > file > defaults), and one-line
//! errors naming the file and line.

use dmp_testkit::{Sandbox, random_file};
use std::path::Path;

fn write_config(sb: &Sandbox, text: &str) {
    std::fs::write(sb.config.join("config.toml"), text).expect("write config.toml");
}

/// Runs dftp-send towards a receiver that never comes (it gives up after
/// 0.3 s) and returns its stderr; `env_store` replaces DMP_STORE (`None`:
/// unset).
fn offer(sb: &Sandbox, extra: &[&str], env_store: Option<&Path>) -> (Option<i32>, String) {
    let file = sb.path("data.bin");
    if !file.exists() {
        random_file(&file, 10_000, 1);
    }
    let mut cmd = sb.command("dftp-send", ["bob".as_ref(), "alice".as_ref(), file.as_os_str()]);
    cmd.args(["--timeout", "0.3"]).args(extra);
    match env_store {
        Some(s) => cmd.env("DMP_STORE", s),
        None => cmd.env_remove("DMP_STORE"),
    };
    let f = sb.spawn_command("dftp-send", cmd).wait();
    (f.code, f.stderr.clone())
}

#[test]
fn store_precedence_flag_env_file() {
    let sb = Sandbox::new();
    let (a, b, c) = (sb.mkdir("store-file"), sb.mkdir("store-env"), sb.mkdir("store-flag"));
    write_config(&sb, &format!("store = {:?}\n", a.display().to_string()));

    let (_, err) = offer(&sb, &[], None);
    assert!(err.contains(&format!("via {}", a.display())), "file's store when nothing else says:\n{err}");
    assert!(a.join("alice").exists(), "the file's store was used");

    let (_, err) = offer(&sb, &[], Some(&b));
    assert!(err.contains(&format!("via {}", b.display())), "DMP_STORE beats the file:\n{err}");

    let flag = c.display().to_string();
    let (_, err) = offer(&sb, &["--store", &flag], Some(&b));
    assert!(err.contains(&format!("via {flag}")), "--store beats DMP_STORE:\n{err}");
}

#[test]
fn dftp_defaults_from_the_file_and_flags_override_them() {
    let sb = Sandbox::new();
    // The quota check shows the block size in effect.
    write_config(&sb, "[dftp]\nblock_size = \"8k\"\nquota = \"4k\"\n");
    let (code, err) = offer(&sb, &[], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("quota (4KiB)") && err.contains("block size (8KiB)"), "{err}");

    // A flag overrides the file's value: the quota now holds a block.
    let (code, err) = offer(&sb, &["-b", "2k"], None);
    assert_eq!(code, Some(1), "runs, and times out waiting for bob:\n{err}");
    let (code, err) = offer(&sb, &["--quota", "1m"], None);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn explicit_config_file_by_flag_and_env() {
    let sb = Sandbox::new();
    let other = sb.path("elsewhere.toml");
    std::fs::write(&other, "[dftp]\nblock_size = \"8k\"\nquota = \"4k\"\n").unwrap();
    let (code, err) = offer(&sb, &["--config", other.to_str().unwrap()], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("block size (8KiB)"), "{err}");

    let mut cmd = sb.command("dftp-send", ["bob", "alice", "nofile"]);
    cmd.env("DMP_CONFIG", &other);
    let f = sb.spawn_command("dftp-send", cmd).wait();
    assert_eq!(f.code, Some(2));
    assert!(f.stderr.contains("block size (8KiB)"), "DMP_CONFIG names the file: {}", f.stderr);

    let missing = sb.path("missing.toml");
    let (code, err) = offer(&sb, &["--config", missing.to_str().unwrap()], None);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn malformed_file_is_one_line_naming_the_line() {
    let sb = Sandbox::new();
    let path = sb.config.join("config.toml");
    for (text, line, what) in [
        ("store = \"/tmp\"\n[dftp]\nblok_size = \"8k\"\n", 3, "blok_size"),
        ("[dftp]\nwindow = \"many\"\n", 2, "window"),
        ("\n[dftp]\nblock_size = \"8 parsecs\"\n", 3, "block_size"),
        ("store = \n", 1, ""),
        ("[peers.bob]\noutbox = \"gopher://x\"\n", 1, "peers.bob"),
    ] {
        std::fs::write(&path, text).unwrap();
        for tool in ["dftp-send", "dftp-receive", "dmp-ping-client", "dmp-ping-server"] {
            let args: Vec<&str> = match tool {
                "dftp-send" => vec!["bob", "alice", "data.bin"],
                "dftp-receive" => vec!["alice", "bob", "."],
                "dmp-ping-client" => vec!["bob", "alice", "-c", "1"],
                _ => vec!["bob"],
            };
            random_file(&sb.path("data.bin"), 10, 1);
            let mut cmd = sb.command(tool, args);
            cmd.env_remove("DMP_STORE");
            let f = sb.spawn_command(tool, cmd).wait_for(std::time::Duration::from_secs(20));
            assert_eq!(f.code, Some(2), "{tool} with {text:?}: {}", f.describe());
            let lines: Vec<&str> = f.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{tool} with {text:?}: one line: {}", f.describe());
            let want = format!("{}:{line}:", path.display());
            assert!(lines[0].starts_with("error: ") && lines[0].contains(&want), "{tool}: {}", lines[0]);
            assert!(lines[0].contains(what), "{tool}: {}", lines[0]);
        }
    }
}

#[test]
fn peer_outbox_from_the_file() {
    let sb = Sandbox::new();
    // An outbox URL nobody serves: the tools read it instead of <store>/bob.
    write_config(&sb, "[peers.bob]\noutbox = \"http://127.0.0.1:9/bob\"\n");
    let mut cmd = sb.command("dmp-ping-client", ["bob", "alice", "-c", "1", "-W", "0.5", "-v"]);
    cmd.env("RUST_LOG", "info");
    let f = sb.spawn_command("dmp-ping-client", cmd).wait();
    assert!(f.stderr.contains("reading the outbox of bob at http://127.0.0.1:9/bob"), "{}", f.describe());
}

/// The default peers file lies beside the keys, known_peers and
/// config.toml: `peers` in `$DMP_CONFIG_DIR` when that is set (before, it
/// was always `~/.config/dmp/peers`).
#[test]
fn peers_file_beside_the_config() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(&sb.config).unwrap();
    std::fs::write(sb.config.join("peers"), "bob = http://127.0.0.1:9/bob\n").unwrap();
    let mut cmd = sb.command("dmp-ping-client", ["bob", "alice", "-c", "1", "-W", "0.5", "-v"]);
    cmd.env("RUST_LOG", "info").env_remove("DMP_PEERS_FILE");
    let f = sb.spawn_command("dmp-ping-client", cmd).wait();
    assert!(f.stderr.contains("reading the outbox of bob at http://127.0.0.1:9/bob"), "{}", f.describe());
}
