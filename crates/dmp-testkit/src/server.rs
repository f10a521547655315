//! Test servers on loopback (nginx WebDAV, nginx static, SeaweedFS S3),
//! run in the foreground by `scripts/<script> run DIR` on a free port and
//! stopped (TERM, then KILL) when dropped; and the rule for a missing
//! server: the test is skipped with a message, unless `DMP_REQUIRE_SERVERS`
//! is set (CI), when it fails. Used by `dftp-send/tests/remote_e2e.rs` and
//! the other end-to-end tests that need a real server.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn servers_required() -> bool {
    std::env::var("DMP_REQUIRE_SERVERS").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// Whether `test` can run: every binary it needs is installed, or one is
/// missing and servers are not required (the test says so and is skipped).
pub fn have(test: &str, bins: &[&str]) -> bool {
    let dav_ext =
        ["/usr/lib/nginx/modules/ngx_http_dav_ext_module.so", "/usr/share/nginx/modules/ngx_http_dav_ext_module.so"];
    let missing = bins.iter().find(|b| match **b {
        "dav-ext" => !dav_ext.iter().any(|m| Path::new(m).is_file()),
        b => which(b).is_none(),
    });
    let Some(m) = missing else { return true };
    let what = if *m == "dav-ext" {
        "the nginx dav-ext module (libnginx-mod-http-dav-ext)".to_owned()
    } else {
        format!("`{m}`")
    };
    if servers_required() {
        panic!("{test}: {what} is not installed and DMP_REQUIRE_SERVERS is set (run scripts/install-test-deps.sh)");
    }
    eprintln!(
        "SKIPPED {test}: {what} is not installed (run scripts/install-test-deps.sh; set DMP_REQUIRE_SERVERS=1 to fail instead)"
    );
    false
}

/// A server run in the foreground by `scripts/<script> run DIR` on a free
/// port; stopped (TERM, then KILL) and its directory removed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    script: &'static str,
    env: Vec<(String, String)>,
    vars: HashMap<String, String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Server {
    pub fn start(script: &'static str, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::Builder::new().prefix("dmp-e2e-srv-").tempdir().unwrap();
        let mut s = Server {
            child: None,
            port: free_port(),
            dir,
            script,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            vars: HashMap::new(),
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = File::options().create(true).append(true).open(self.dir.path().join("script.log")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(self.script);
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .arg("run")
            .arg(self.dir.path())
            .env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", self.script)));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited ({st}) before listening:\n{}", self.script, self.logs());
            }
            assert!(Instant::now() < deadline, "{} not listening after 30 s:\n{}", self.script, self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(self.dir.path().join("server.env")).unwrap_or_default();
        self.vars = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    }

    pub fn var(&self, name: &str) -> String {
        self.vars.get(name).cloned().unwrap_or_else(|| panic!("{}: no {name} in server.env", self.script))
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["script.log", "logs/error.log", "logs/weed.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.path().join(f)) {
                let lines: Vec<&str> = t.lines().collect();
                out.push_str(&format!("--- {f}\n{}\n", lines[lines.len().saturating_sub(30)..].join("\n")));
            }
        }
        out
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SeaweedFS leaves gRPC sockets in /tmp, named by port.
        if let Ok(ports) = std::fs::read_to_string(self.dir.path().join("ports")) {
            for p in ports.split_whitespace() {
                for role in ["master", "volume", "filer", "s3", "admin"] {
                    let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{role}-grpc-{p}.sock"));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
