//! `ferrite run -c ferrite.toml [--filter REGEX]`: named targets, run one
//! after the other, one line each and a summary. The file:
//!
//! ```toml
//! [[target]]
//! name = "smoke"
//! kernel = "build/vmlinux"        # relative paths are from the file's directory
//! rootfs = "rootfs/"              # or image = "root.ext4"; neither: busybox alone
//! command = ["uname", "-a"]       # or one string, run by sh -c
//! cmdline = "quiet"               # optional, like --cmdline
//! cpus = 1                        # optional
//! memory = "512M"                 # optional
//! timeout = 300                   # optional, seconds, 0 = none
//! boot_timeout = 300              # optional
//! ktap = false                    # optional
//! ```
//!
//! `--cmdline`, `--verbose` and `--drive` given on the command line apply
//! to every target (`--cmdline` after the target's own). The exit status
//! is 0 when every selected target exited 0, 1 otherwise, 125 when the
//! file or the filter is unusable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use block::CacheMode;
use serde::Deserialize;

use super::verdict::STATUS_RUN_ERROR;
use super::{limit, report, run_one, Root, RunArgs, RunSpec};

/// The file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The targets, in order.
    #[serde(default)]
    pub target: Vec<Target>,
}

/// The command: an argv, or a string for `sh -c`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TargetCommand {
    /// Run as given.
    Argv(Vec<String>),
    /// Run by `sh -c`.
    Shell(String),
}

/// One `[[target]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Its name (for `--filter` and the report).
    pub name: String,
    /// The kernel.
    pub kernel: PathBuf,
    /// `--rootfs`.
    pub rootfs: Option<PathBuf>,
    /// `--image`.
    pub image: Option<PathBuf>,
    /// The command.
    pub command: TargetCommand,
    /// `--cmdline`.
    pub cmdline: Option<String>,
    /// `--cpus`.
    pub cpus: Option<u8>,
    /// `--memory`.
    pub memory: Option<String>,
    /// `--timeout`.
    pub timeout: Option<u64>,
    /// `--boot-timeout`.
    pub boot_timeout: Option<u64>,
    /// `--ktap`.
    #[serde(default)]
    pub ktap: bool,
}

/// Why the file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The host error.
        source: std::io::Error,
    },
    /// Not a valid ferrite.toml.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, on one line.
        message: String,
    },
    /// A target is not usable.
    #[error("{path}: target {name:?}: {why}")]
    Target {
        /// The file.
        path: PathBuf,
        /// The target.
        name: String,
        /// Why.
        why: String,
    },
    /// A bad `--filter`.
    #[error("--filter: {0}")]
    Filter(#[from] regex::Error),
}

/// Parses `text` (read from `path`, which relative paths are based on)
/// into run specs, with the command line's shared options.
pub fn specs(
    path: &Path,
    text: &str,
    args: &RunArgs,
) -> Result<Vec<(String, RunSpec)>, ManifestError> {
    let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for t in manifest.target {
        let bad = |why: String| ManifestError::Target {
            path: path.to_path_buf(),
            name: t.name.clone(),
            why,
        };
        let root = match (&t.rootfs, &t.image) {
            (Some(_), Some(_)) => return Err(bad("has both rootfs and image".into())),
            (Some(d), None) => Root::Dir(base.join(d)),
            (None, Some(i)) => Root::Image(base.join(i)),
            (None, None) => Root::Busybox,
        };
        let command: Vec<OsString> = match &t.command {
            TargetCommand::Argv(v) if v.is_empty() => return Err(bad("command is empty".into())),
            TargetCommand::Argv(v) => v.iter().map(OsString::from).collect(),
            TargetCommand::Shell(s) => ["sh", "-c", s].iter().map(OsString::from).collect(),
        };
        let memory = match &t.memory {
            Some(m) => crate::cli::parse_memory(m).map_err(bad)?,
            None => args.memory,
        };
        let cpus = t.cpus.unwrap_or(args.cpus);
        if cpus == 0 || cpus == 255 {
            return Err(bad(format!("cpus = {cpus} is not in 1..=254")));
        }
        let cmdline = [t.cmdline.as_deref(), args.cmdline.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let spec = RunSpec {
            kernel: base.join(&t.kernel),
            root,
            cpus,
            memory,
            cmdline: Some(cmdline),
            timeout: limit(t.timeout.unwrap_or(args.timeout)),
            boot_timeout: limit(t.boot_timeout.unwrap_or(args.boot_timeout)),
            ktap: t.ktap,
            out: None,
            drives: args.drives.clone(),
            command,
            root_cache: CacheMode::Unsafe,
            record: None,
            capture: false,
        };
        out.push((t.name, spec));
    }
    Ok(out)
}

/// Runs the targets of the file at `path` whose names match `filter`.
pub fn run_file(path: &Path, filter: Option<&str>, args: &RunArgs, verbose: bool) -> i32 {
    match select(path, filter, args) {
        Ok(targets) => run_targets(&targets, verbose),
        Err(e) => {
            eprintln!("ferrite run: {e}");
            STATUS_RUN_ERROR
        }
    }
}

fn select(
    path: &Path,
    filter: Option<&str>,
    args: &RunArgs,
) -> Result<Vec<(String, RunSpec)>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let re = filter.map(regex::Regex::new).transpose()?;
    let mut targets = specs(path, &text, args)?;
    targets.retain(|(name, _)| re.as_ref().is_none_or(|re| re.is_match(name)));
    Ok(targets)
}

fn run_targets(targets: &[(String, RunSpec)], verbose: bool) -> i32 {
    let mut failed = 0;
    for (name, spec) in targets {
        let t0 = Instant::now();
        let verdict = run_one(spec, verbose);
        report(&verdict);
        let secs = t0.elapsed().as_secs_f64();
        if verdict.status == 0 {
            eprintln!("ferrite run: [pass] {name} (status 0, {secs:.1} s)");
        } else {
            failed += 1;
            eprintln!(
                "ferrite run: [FAIL] {name} (status {}, {secs:.1} s)",
                verdict.status
            );
        }
    }
    eprintln!(
        "ferrite run: {} target(s): {} passed, {failed} failed",
        targets.len(),
        targets.len() - failed
    );
    i32::from(failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut all = vec!["ferrite", "-c", "x.toml"];
        all.extend(extra);
        Wrap::parse_from(all).run
    }

    const FILE: &str = r#"
[[target]]
name = "status-one"
kernel = "k/vmlinux"
command = "exit 1"
cmdline = "quiet"
timeout = 10

[[target]]
name = "ktap"
kernel = "/abs/vmlinux"
image = "root.ext4"
command = ["/bin/echo", "a b"]
ktap = true
memory = "256M"
"#;

    #[test]
    fn targets_become_specs() {
        let specs = specs(
            Path::new("/ci/ferrite.toml"),
            FILE,
            &args(&["--cmdline", "noxsave"]),
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        let (name, one) = &specs[0];
        assert_eq!(name, "status-one");
        assert_eq!(one.kernel, PathBuf::from("/ci/k/vmlinux"));
        assert_eq!(one.command, ["sh", "-c", "exit 1"]);
        assert_eq!(one.cmdline.as_deref(), Some("quiet noxsave"));
        assert_eq!(one.timeout, limit(10));
        assert_eq!(one.root, Root::Busybox);
        let (_, two) = &specs[1];
        assert_eq!(two.kernel, PathBuf::from("/abs/vmlinux"));
        assert_eq!(two.root, Root::Image("/ci/root.ext4".into()));
        assert_eq!(two.command, ["/bin/echo", "a b"]);
        assert!(two.ktap);
        assert_eq!(two.memory, 256 << 20);
    }

    #[test]
    fn bad_files_say_where() {
        let a = args(&[]);
        let err = specs(Path::new("f.toml"), "[[target]]\nname = 1\n", &a).unwrap_err();
        assert!(err.to_string().starts_with("f.toml: "), "{err}");
        let err = specs(
            Path::new("f.toml"),
            "[[target]]\nname='x'\nkernel='k'\ncommand=[]\n",
            &a,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("target \"x\": command is empty"),
            "{err}"
        );
        let err = specs(
            Path::new("f.toml"),
            "[[target]]\nname='x'\nkernel='k'\ncommand='a'\nbogus=1\n",
            &a,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn the_filter_selects_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferrite.toml");
        std::fs::write(&path, FILE).unwrap();
        let picked = select(&path, Some("^kt"), &args(&[])).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].0, "ktap");
        assert!(matches!(
            select(&path, Some("("), &args(&[])),
            Err(ManifestError::Filter(_))
        ));
    }
}
