//! What every tool answers without a store: `--version`, `--help` with
//! examples and exit codes, and the hidden `--generate` that `cargo xtask
//! dist` uses for man pages and shell completions. Runs the real binaries
//! (from `DMP_BIN_DIR`, see dmp-testkit).

use dmp_testkit::{Sandbox, TIMEOUT};

const TOOLS: [&str; 4] = ["dmp-ping-server", "dmp-ping-client", "dftp-send", "dftp-receive"];

fn run(sb: &Sandbox, tool: &str, args: &[&str]) -> dmp_testkit::Finished {
    sb.spawn(tool, args).wait_for(TIMEOUT)
}

#[test]
fn every_tool_answers_version_with_its_name_and_version() {
    let sb = Sandbox::new();
    for tool in TOOLS {
        for flag in ["--version", "-V"] {
            let f = run(&sb, tool, &[flag]);
            f.expect_ok();
            assert_eq!(f.stdout.trim(), format!("{tool} {}", env!("CARGO_PKG_VERSION")), "{tool} {flag}");
        }
    }
}

#[test]
fn every_help_has_examples_exit_codes_and_the_common_flags() {
    let sb = Sandbox::new();
    for tool in TOOLS {
        let f = run(&sb, tool, &["--help"]);
        f.expect_ok();
        let h = &f.stdout;
        assert!(h.contains("Examples:") && h.contains(&format!("  {tool} ")), "{tool}: examples\n{h}");
        assert!(h.contains("Exit codes: 0 "), "{tool}: exit codes\n{h}");
        for flag in ["--store <URL>", "--verbose", "--quiet", "--json", "--version"] {
            assert!(h.contains(flag), "{tool}: {flag} in --help\n{h}");
        }
        assert!(!h.contains("--generate"), "{tool}: --generate stays hidden");
    }
}

#[test]
fn man_pages_are_generated_for_every_tool() {
    let sb = Sandbox::new();
    for tool in TOOLS {
        // Required arguments do not get in the way.
        let f = run(&sb, tool, &["--generate", "man"]);
        f.expect_ok();
        let man = &f.stdout;
        let escaped = tool.replace('-', "\\-");
        assert!(man.contains(&format!(".TH {tool} 1")), "{tool}: .TH header\n{man}");
        for section in [".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH OPTIONS", ".SH VERSION"] {
            assert!(man.contains(section), "{tool}: {section}");
        }
        assert!(man.contains(&format!("{escaped} \\-")), "{tool}: NAME line");
        assert!(man.contains("Examples:") && man.contains("\\-\\-store"), "{tool}: examples and options");
        assert!(f.stderr.is_empty(), "{tool}: nothing on stderr: {}", f.stderr);
    }
}

#[test]
fn completions_are_generated_for_bash_zsh_and_fish() {
    let sb = Sandbox::new();
    for tool in TOOLS {
        let ident = tool.replace('-', "__");
        for (shell, want) in [
            ("bash", format!("complete -F _{ident} -o bashdefault -o default {tool}\n")),
            ("zsh", format!("#compdef {tool}")),
            ("fish", format!("complete -c {tool} ")),
        ] {
            let f = run(&sb, tool, &["--generate", &format!("complete-{shell}")]);
            f.expect_ok();
            let script = &f.stdout;
            assert!(script.contains(&want), "{tool} {shell}: {want:?} in\n{script}");
            let (store, quiet) = if shell == "fish" { ("-l store", "-l quiet") } else { ("--store", "--quiet") };
            assert!(script.contains(store) && script.contains(quiet), "{tool} {shell}: options");
            // Where the shell is installed, the script must at least parse.
            let check = sb.path(format!("{tool}.{shell}"));
            std::fs::write(&check, script).unwrap();
            if let Ok(st) = std::process::Command::new(shell).arg("-n").arg(&check).status() {
                assert!(st.success(), "{shell} -n {tool} completion");
            }
        }
    }
}

#[test]
fn generate_with_an_unknown_kind_is_a_one_line_usage_error() {
    let sb = Sandbox::new();
    for args in [&["--generate", "pdf"][..], &["--generate"][..], &["--generate=complete-tcsh"][..]] {
        let f = run(&sb, "dftp-send", args);
        f.expect_code(2);
        assert!(f.stdout.is_empty(), "{args:?}");
        let lines = f.stderr_lines();
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with("error: --generate") && lines[0].contains("complete-fish"), "{lines:?}");
    }
}

#[test]
fn ping_server_json_prints_one_summary_object_at_exit() {
    let sb = Sandbox::new();
    let mut srv = sb.spawn("dmp-ping-server", ["bob", "--json"]);
    sb.run("dmp-ping-client", ["bob", "alice", "-c", "2", "-i", "0.2", "-W", "20", "-q"]).expect_ok();
    srv.signal("TERM");
    let f = srv.wait();
    f.expect_ok();
    let lines: Vec<&str> = f.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stdout: {}", f.stdout);
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["answered", "clients", "seconds", "server", "store_outages"], "{v}");
    assert_eq!((v["server"].as_str(), v["clients"].as_u64(), v["answered"].as_u64()), (Some("bob"), Some(1), Some(2)));
    assert_eq!(v["store_outages"], 0);
    assert!(v["seconds"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn a_bad_store_url_is_one_line_exit_2_and_never_shows_the_password() {
    let sb = Sandbox::new();
    for (args, env) in [
        (vec!["--store", "webdav://user:hunter2@127.0.0.1/x"], None),
        (vec!["--store", "webdav://user:hun/ter2@127.0.0.1/x"], None),
        (vec!["--store", "s3://user:hunter2@bucket/x"], None),
        (vec!["--peer-outbox", "bob=http://user:hunter2@127.0.0.1/x"], None),
        (vec![], Some("webdav://user:hun?ter2@127.0.0.1/x")),
        (vec!["--store", "webdav://127.0.0.1:0/x"], None),
    ] {
        let mut cmd = sb.command("dmp-ping-client", ["bob", "alice", "-c", "1"].iter().chain(&args));
        if let Some(store) = env {
            cmd.env("DMP_STORE", store);
        }
        let f = sb.spawn_command("dmp-ping-client", cmd).wait_for(TIMEOUT);
        f.expect_code(2);
        let lines = f.stderr_lines();
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].starts_with("error: --"), "{args:?}: {lines:?}");
        assert!(!f.stderr.contains("hunter2") && !f.stderr.contains("ter2"), "{args:?}: {lines:?}");
    }
}

/// A store on a host that accepts and never answers: the start-up check is
/// retried for up to a minute, and Ctrl-C is heard meanwhile (exit 130 at
/// once; before, after the whole minute, exit 2).
#[test]
fn ctrl_c_is_heard_while_the_store_does_not_answer() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let store = format!("webdav://127.0.0.1:{}/dmp", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s);
        }
    });
    let sb = Sandbox::new();
    for (tool, args) in [("dftp-send", vec!["bob", "alice", "/etc/hostname"]), ("dmp-ping-server", vec!["bob"])] {
        let mut args = args;
        args.extend(["--store", store.as_str()]);
        let mut p = sb.spawn(tool, &args);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let t = std::time::Instant::now();
        p.signal("INT");
        let f = p.wait_for(TIMEOUT);
        assert_eq!(f.code, Some(130), "{tool}: {}", f.describe());
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{tool}: Ctrl-C heard after {:?}", t.elapsed());
    }
}
