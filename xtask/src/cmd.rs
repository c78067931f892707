//! Small helpers for running external programs.

use std::{
    env,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
// Written once in closewait-host (the benchmark uses them too); the tasks call them as `cmd::…`.
pub use closewait_host::{
    command::{display, find_program, probe},
    privileges::is_root,
};

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

/// Prints `$ <command line>`, then replaces this process with it, so that its exit code and
/// signals are its own. Returns only on error.
pub fn exec_echoed(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let err = cmd.exec();
    Err(err).with_context(|| format!("failed to start: {}", display(cmd)))
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
