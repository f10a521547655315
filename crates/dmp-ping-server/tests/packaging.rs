//! The service files in packaging/: the systemd unit passes
//! `systemd-analyze verify` (and its offline security review rates it
//! well) with the real binary as ExecStart, and keeps the restart and
//! sandboxing settings the README promises; the monitoring check maps
//! dmp-ping-client's exit codes to OK, CRITICAL and UNKNOWN.
//!
//! Without systemd-analyze (Debian package systemd, installed by
//! scripts/install-test-deps.sh) the unit test is skipped with a message,
//! unless `DMP_REQUIRE_SERVERS` is set (CI), when it fails.

use dmp_testkit::{Sandbox, TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn unit_text() -> String {
    std::fs::read_to_string(packaging().join("systemd/dmp-ping-server@.service")).expect("the unit file")
}

fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("DMP_REQUIRE_SERVERS").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!(
                "systemd-analyze is not installed and DMP_REQUIRE_SERVERS is set (run scripts/install-test-deps.sh)"
            );
        }
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd; scripts/install-test-deps.sh)");
    }
    found
}

#[test]
fn unit_keeps_restart_and_sandboxing_settings() {
    let unit = unit_text();
    for line in [
        "ExecStart=/usr/local/bin/dmp-ping-server %i $DMP_PING_SERVER_ARGS",
        "EnvironmentFile=/etc/dmp/ping-server-%i.env",
        "Restart=on-failure",
        "User=dmp",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "ReadWritePaths=-/srv/dmp",
        "PrivateTmp=yes",
        "StateDirectory=dmp/%i",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} in the unit");
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else { return };
    let sb = Sandbox::new();
    // The unit as installed, but starting the binary under test: verify
    // checks that ExecStart is executable.
    let bin = dmp_testkit::bin("dmp-ping-server");
    let unit = unit_text().replace("/usr/local/bin/dmp-ping-server", bin.to_str().unwrap());
    let dir = sb.mkdir("units");
    std::fs::write(dir.join("dmp-ping-server@.service"), unit).unwrap();
    std::os::unix::fs::symlink("dmp-ping-server@.service", dir.join("dmp-ping-server@bob.service")).unwrap();
    for name in ["dmp-ping-server@.service", "dmp-ping-server@bob.service"] {
        // --man=no: Documentation=man:... would need the man page installed.
        let out = Command::new(&analyze).args(["verify", "--man=no"]).arg(dir.join(name)).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("systemd-analyze verify {name}: {} {text:?}", out.status);
        assert!(out.status.success(), "systemd-analyze verify {name} failed: {text}");
        // Unknown keys and bad values are only warnings: there must be none.
        assert!(text.trim().is_empty(), "systemd-analyze verify {name} complained:\n{text}");
    }
    // The sandboxing is real: systemd's own review of it.
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(dir.join("dmp-ping-server@bob.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    eprintln!("{level}");
    let score: f64 = level.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(score < 2.0, "exposure level {score} (0 best, 10 worst):\n{text}");
}

/// Runs the monitoring check with dmp-ping-client from the binaries under test.
fn check(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let bin_dir = dmp_testkit::bin("dmp-ping-client").parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut cmd = Command::new(packaging().join("monitoring/check_dmp_ping"));
    cmd.args(args)
        .env("PATH", path)
        .env("DMP_STORE", &sb.store)
        .env("DMP_CONFIG_DIR", &sb.config)
        .env("DMP_STATE_DIR", &sb.state);
    let f = sb.spawn_command("check_dmp_ping", cmd).wait_for(TIMEOUT);
    (f.code.unwrap_or(-1), f.stdout)
}

#[test]
fn monitoring_check_maps_exit_codes_to_ok_critical_unknown() {
    let sb = Sandbox::new();
    let (code, out) = check(&sb, &["bob", "-W", "1"]);
    assert_eq!(code, 2, "no server: CRITICAL\n{out}");
    assert!(out.starts_with("DMP PING CRITICAL - no answer from bob within 1 s |"), "{out}");

    let mut srv = sb.spawn("dmp-ping-server", ["bob"]);
    let (code, out) = check(&sb, &["bob", "nagios", "-W", "30"]);
    assert_eq!(code, 0, "a reply: OK\n{out}");
    assert!(out.starts_with("DMP PING OK - bob answered in ") && out.contains("| rtt="), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    srv.signal("TERM");
    srv.wait().expect_ok();

    // The server back with another key (a reinstall, or an impostor): the
    // client's key error as the status, not "no answer".
    let mut cmd = sb.command("dmp-ping-server", ["bob"]);
    cmd.env("DMP_CONFIG_DIR", sb.path("config-reinstalled"));
    let mut srv = sb.spawn_command("dmp-ping-server", cmd);
    let (code, out) = check(&sb, &["bob", "nagios", "-W", "30"]);
    assert_eq!(code, 3, "a changed key: UNKNOWN\n{out}");
    assert!(out.starts_with("DMP PING UNKNOWN - the key of bob changed: pinned "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    srv.signal("TERM");
    srv.wait().expect_ok();

    for args in [&["Not-An-Id"][..], &["bob", "nagios", "--store", "/proc/no/such/store"][..], &[][..]] {
        let (code, out) = check(&sb, args);
        assert_eq!(code, 3, "{args:?}: UNKNOWN\n{out}");
        assert!(out.starts_with("DMP PING UNKNOWN - ") || out.starts_with("UNKNOWN - usage"), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
    }
}
