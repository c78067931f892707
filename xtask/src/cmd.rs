//! Small helpers for running external programs.

use std::{
    env,
    ffi::OsStr,
    fs,
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the xtask crate lives inside the workspace")
}

/// A `cargo` command that runs in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// The command line as a user could type it, including the variables set on `cmd`.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(key, val)| Some(format!("{}={}", key.to_string_lossy(), quote(val?))));
    let argv = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    envs.chain(argv).collect::<Vec<_>>().join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` and fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start: {}", display(cmd)))?;
    match (status.success(), status.code(), status.signal()) {
        (true, _, _) => Ok(()),
        (false, Some(code), _) => bail!("command failed: {} (exit status {code})", display(cmd)),
        (false, None, Some(signal)) => {
            bail!(
                "command failed: {} (killed by signal {signal})",
                display(cmd)
            )
        }
        (false, None, None) => bail!("command failed: {} ({status})", display(cmd)),
    }
}

/// Prints `$ <command line>`, then [`run`]s it.
pub fn run_echoed(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    run(cmd)
}

/// Runs `cmd` quietly; its standard output if it could run and succeeded.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where `name` is on `PATH` (or in /usr/sbin, /sbin, which a non-root `PATH` may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|file| {
            fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    // "Uid:	<real>	<effective>	<saved>	<fs>"
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Puts cargo's bin directory (where `cargo install` puts bpf-linker) on `PATH`, so that we and
/// the programs we start find what we install even if the user's shell doesn't have it.
pub fn add_cargo_bin_to_path() {
    let Some(bin) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin"))
    else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return;
    }
    if let Ok(new_path) = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))) {
        // Edition 2021: safe; we are still single-threaded here.
        env::set_var("PATH", new_path);
    }
}
