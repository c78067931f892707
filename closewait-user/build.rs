//! Builds the kernel crate (closewait-ebpf) for bpfel-unknown-none and leaves
//! the object at $OUT_DIR/closewait, which the agent embeds.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // A stub object so `cargo check`/clippy work without bpf-linker; the
        // agent refuses to run with it and says how to rebuild.
        fs::write(out_dir.join("closewait"), b"")?;
    }
    // The BPF target has no prebuilt `core`: it is built from rust-src with
    // `-Z build-std`, which stable cargo allows with RUSTC_BOOTSTRAP=1. Opt in
    // here so a plain `cargo build` works on the stable toolchain.
    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    // Build with the toolchain that builds us (rustup sets RUSTUP_TOOLCHAIN).
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_string());
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir.join("../closewait-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "closewait-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the kernel program (needs bpf-linker and rust-src: run `cargo xtask build`, which installs them)")
}
