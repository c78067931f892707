//! tracefs, which classic tracepoints need. It is not mounted at boot on
//! many servers; root can mount it.

use std::{ffi::CString, io, path::PathBuf};

/// Where tracefs is mounted by convention.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// The older location, under debugfs.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracefs root, if one is mounted.
pub fn mounted() -> Option<PathBuf> {
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("events").is_dir())
}

/// The tracefs root, mounting it on [`TRACEFS`] when nothing is mounted.
/// `Ok((root, true))` when this call mounted it.
pub fn ensure_mounted() -> io::Result<(PathBuf, bool)> {
    if let Some(root) = mounted() {
        return Ok((root, false));
    }
    let target = CString::new(TRACEFS).map_err(io::Error::other)?;
    let fstype = CString::new("tracefs").map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((TRACEFS.into(), true))
}
