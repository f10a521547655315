//! `cargo xtask dist`: release builds of the four tools with their man
//! pages and shell completions, laid out for packaging under `target/dist`:
//!
//! ```text
//! target/dist/bin/<tool>
//! target/dist/man/man1/<tool>.1
//! target/dist/completions/bash/<tool>
//! target/dist/completions/zsh/_<tool>
//! target/dist/completions/fish/<tool>.fish
//! target/dist/systemd/ and target/dist/monitoring/ (copies of packaging/)
//! ```
//!
//! Man pages and completions come from each binary's hidden `--generate`
//! (dmp_cli::generate), so they always match the clap definitions.

use crate::util::{build_release_tools, heading, root, target_dir};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

pub fn run() -> Result<()> {
    heading("dist: release build");
    let release = build_release_tools()?;
    let dist = target_dir()?.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    heading(&format!("dist: {}", dist.display()));
    for tool in crate::util::tool_packages() {
        let bin = release.join(tool);
        copy(&bin, &dist.join("bin").join(tool))?;
        for (kind, rel) in [
            ("man", format!("man/man1/{tool}.1")),
            ("complete-bash", format!("completions/bash/{tool}")),
            ("complete-zsh", format!("completions/zsh/_{tool}")),
            ("complete-fish", format!("completions/fish/{tool}.fish")),
        ] {
            let out = Command::new(&bin)
                .args(["--generate", kind])
                .output()
                .with_context(|| format!("running {} --generate {kind}", bin.display()))?;
            if !out.status.success() || out.stdout.is_empty() {
                bail!("{tool} --generate {kind} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
            }
            write(&dist.join(&rel), &out.stdout)?;
        }
    }
    for dir in ["systemd", "monitoring"] {
        let src = root().join("packaging").join(dir);
        for ent in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
            let p = ent?.path();
            if p.is_file() {
                copy(&p, &dist.join(dir).join(p.file_name().expect("a file name")))?;
            }
        }
    }
    let mut files = Vec::new();
    list(&dist, &dist, &mut files)?;
    for f in &files {
        println!("{f}");
    }
    println!("{} files in {}", files.len(), dist.display());
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a parent"))
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Copies a file, keeping its permissions (executables stay executable).
fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to.parent().expect("a parent")).with_context(|| format!("creating {}", to.display()))?;
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn list(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut ents: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    ents.sort_by_key(|e| e.file_name());
    for e in ents {
        let p = e.path();
        if p.is_dir() {
            list(base, &p, out)?;
        } else {
            out.push(p.strip_prefix(base).expect("below base").display().to_string());
        }
    }
    Ok(())
}
