//! The classic-tracepoint fallback: make sure tracefs is mounted and read the
//! field offsets of `sock/inet_sock_set_state` from its `format` file.

use std::{fs, path::PathBuf};

use anyhow::{bail, Context as _};
use closewait_common::TpOffsets;

/// The tracefs root, mounting it when nothing is mounted yet (it is not, at
/// boot, on many servers).
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    match closewait_host::tracefs::ensure_mounted() {
        Ok((root, mounted)) => {
            if mounted {
                eprintln!("closewait-trace: mounted tracefs on {}", root.display());
            }
            Ok(root)
        }
        Err(err) => bail!(
            "tracefs is not mounted and `mount -t tracefs tracefs {}` failed: {err}",
            closewait_host::tracefs::TRACEFS
        ),
    }
}

/// Offsets of the tracepoint's fields, from `<tracefs>/events/sock/inet_sock_set_state/format`.
pub fn tracepoint_offsets(root: &std::path::Path) -> anyhow::Result<TpOffsets> {
    let path = root.join("events/sock/inet_sock_set_state/format");
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "the kernel has no sock:inet_sock_set_state tracepoint ({} unreadable)",
            path.display()
        )
    })?;
    parse_format(&text).with_context(|| format!("unexpected layout in {}", path.display()))
}

/// Offset of `ret` in the `syscalls/sys_exit_accept4` record (the same in
/// `sys_exit_accept`).
pub fn accept_ret_offset(root: &std::path::Path) -> anyhow::Result<u32> {
    let path = root.join("events/syscalls/sys_exit_accept4/format");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("no syscall tracepoints ({} unreadable)", path.display()))?;
    field_offset(&text, "ret", 8)
        .with_context(|| format!("unexpected layout in {}", path.display()))
}

fn field_offset(text: &str, name: &str, size: u32) -> anyhow::Result<u32> {
    let (_, offset, actual) = text
        .lines()
        .filter_map(parse_field_line)
        .find(|(n, _, _)| n == name)
        .with_context(|| format!("no field `{name}`"))?;
    if actual != size {
        bail!("field `{name}` has size {actual}, expected {size}");
    }
    Ok(offset)
}

/// Parse a tracepoint `format` file into offsets, checking each field's size.
pub fn parse_format(text: &str) -> anyhow::Result<TpOffsets> {
    let get = |name: &str, size: u32| field_offset(text, name, size);
    Ok(TpOffsets {
        skaddr: get("skaddr", 8)?,
        oldstate: get("oldstate", 4)?,
        newstate: get("newstate", 4)?,
        sport: get("sport", 2)?,
        dport: get("dport", 2)?,
        family: get("family", 2)?,
        protocol: get("protocol", 2)?,
        saddr: get("saddr", 4)?,
        daddr: get("daddr", 4)?,
        saddr_v6: get("saddr_v6", 16)?,
        daddr_v6: get("daddr_v6", 16)?,
    })
}

/// `\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;` -> ("saddr", 32, 4)
fn parse_field_line(line: &str) -> Option<(String, u32, u32)> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.parse().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.parse().ok();
        }
    }
    let name = decl?.split_whitespace().last()?;
    let name = name.split('[').next()?.trim_start_matches('*');
    Some((name.to_string(), offset?, size?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from /sys/kernel/tracing/events/sock/inet_sock_set_state/format on 6.18.
    const FORMAT: &str = "name: inet_sock_set_state
ID: 1522
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s\"
";

    #[test]
    fn parses_real_format_file() {
        let off = parse_format(FORMAT).expect("parses");
        assert_eq!(
            off,
            TpOffsets {
                skaddr: 8,
                oldstate: 16,
                newstate: 20,
                sport: 24,
                dport: 26,
                family: 28,
                protocol: 30,
                saddr: 32,
                daddr: 36,
                saddr_v6: 40,
                daddr_v6: 56,
            }
        );
    }

    #[test]
    fn finds_syscall_ret() {
        let format = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n";
        assert_eq!(field_offset(format, "ret", 8).unwrap(), 16);
        assert!(field_offset(format, "ret", 4).is_err());
    }

    #[test]
    fn rejects_missing_field_and_wrong_size() {
        let missing = FORMAT.replace("protocol", "proto");
        let err = parse_format(&missing).unwrap_err().to_string();
        assert!(err.contains("no field `protocol`"), "{err}");
        let wrong = FORMAT.replace("offset:24;\tsize:2", "offset:24;\tsize:4");
        let err = parse_format(&wrong).unwrap_err().to_string();
        assert!(err.contains("`sport` has size 4"), "{err}");
        assert!(parse_format("garbage\n;;;\nfield:").is_err());
    }
}
