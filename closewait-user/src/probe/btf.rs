//! Offsets of the `struct sock` fields the kernel program reads, looked up in
//! the running kernel's BTF. Rust eBPF has no CO-RE relocations, so this is
//! how the program stays correct across kernel builds.

use std::path::Path;

use btf_rs::{Btf, Type};
use closewait_common::{SockOffsets, COMMON_WINDOW, NO_OFFSET};

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {ty} has no field {field}")]
    NoField { ty: String, field: String },
    #[error("kernel BTF: {0} is a bit field, which the kernel program cannot read")]
    BitField(String),
    #[error("kernel BTF: struct sock_common fields span more than {COMMON_WINDOW} bytes")]
    Window,
}

/// The BTF file at `path` (normally /sys/kernel/btf/vmlinux).
pub fn open(path: &Path) -> Result<Btf, OffsetError> {
    Btf::from_file(path).map_err(|source| OffsetError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Look up every `struct sock` offset the program reads.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, OffsetError> {
    let sock = |field: &str| field_offset(btf, "sock", field);
    let offsets = SockOffsets {
        common_base: 0, // set by fit_window
        sk_protocol: sock("sk_protocol")?,
        skc_family: sock("__sk_common.skc_family")?,
        skc_num: sock("__sk_common.skc_num")?,
        skc_dport: sock("__sk_common.skc_dport")?,
        skc_rcv_saddr: sock("__sk_common.skc_rcv_saddr")?,
        skc_daddr: sock("__sk_common.skc_daddr")?,
        // Absent without CONFIG_IPV6 / CONFIG_NET_NS: the program skips them.
        skc_v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr").unwrap_or(NO_OFFSET),
        skc_v6_daddr: sock("__sk_common.skc_v6_daddr").unwrap_or(NO_OFFSET),
        skc_net: sock("__sk_common.skc_net.net").unwrap_or(NO_OFFSET),
        net_inum: field_offset(btf, "net", "ns.inum").unwrap_or(NO_OFFSET),
        // For owner lookup by inode; without them owners are found by a scan.
        sk_socket: sock("sk_socket").unwrap_or(NO_OFFSET),
        socket_ino: socket_ino(btf).unwrap_or(NO_OFFSET),
        skc_state: sock("__sk_common.skc_state").unwrap_or(NO_OFFSET),
    };
    fit_window(offsets)
}

/// Offset of `sp` in `struct pt_regs`; `None` when the BTF does not say
/// (another architecture's naming): callers a frame-pointer walk skips are
/// then not recovered.
pub fn regs_sp_offset(btf: &Btf) -> Option<u32> {
    field_offset(btf, "pt_regs", "sp").ok()
}

/// Offsets of `ip` and `bp` in `struct pt_regs`, where the unwinder of a
/// stack copy starts; `None` without them (no copies then).
pub fn regs_ip_bp_offsets(btf: &Btf) -> Option<(u32, u32)> {
    Some((
        field_offset(btf, "pt_regs", "ip").ok()?,
        field_offset(btf, "pt_regs", "bp").ok()?,
    ))
}

/// Place the one-read window over the `sock_common` fields: the required
/// ones must fit, the optional ones (IPv6 addresses, netns) are dropped if
/// they do not.
fn fit_window(mut off: SockOffsets) -> Result<SockOffsets, OffsetError> {
    let required = [
        (off.skc_daddr, 4),
        (off.skc_rcv_saddr, 4),
        (off.skc_dport, 2),
        (off.skc_num, 2),
        (off.skc_family, 2),
    ];
    let base = required.iter().map(|(o, _)| *o).min().unwrap_or(0);
    let fits =
        |o: u32, size: u32| o != NO_OFFSET && o >= base && o - base + size <= COMMON_WINDOW as u32;
    if !required.iter().all(|&(o, size)| fits(o, size)) {
        return Err(OffsetError::Window);
    }
    off.common_base = base;
    for (field, size) in [
        (&mut off.skc_v6_daddr, 16),
        (&mut off.skc_v6_rcv_saddr, 16),
        (&mut off.skc_net, 8),
    ] {
        if !fits(*field, size) {
            *field = NO_OFFSET;
        }
    }
    if off.skc_v6_daddr == NO_OFFSET || off.skc_v6_rcv_saddr == NO_OFFSET {
        off.skc_v6_daddr = NO_OFFSET;
        off.skc_v6_rcv_saddr = NO_OFFSET;
    }
    Ok(off)
}

/// From a `struct socket *` to its inode's `i_ino`: sockets live in a
/// `struct socket_alloc { struct socket socket; struct inode vfs_inode; }`.
fn socket_ino(btf: &Btf) -> Result<u32, OffsetError> {
    let socket = field_offset(btf, "socket_alloc", "socket")?;
    let inode = field_offset(btf, "socket_alloc", "vfs_inode")?;
    let ino = field_offset(btf, "inode", "i_ino")?;
    Ok(inode + ino - socket)
}

/// Byte offset of a dotted field path (`a.b.c`) in struct `ty`, looking
/// through anonymous structs and unions as C does.
pub fn field_offset(btf: &Btf, ty: &str, path: &str) -> Result<u32, OffsetError> {
    let root = btf
        .resolve_types_by_name(ty)
        .map_err(|_| OffsetError::NoStruct(ty.to_string()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| OffsetError::NoStruct(ty.to_string()))?;
    let mut current = root;
    let mut offset_bits = 0u32;
    for field in path.split('.') {
        let (bits, member_ty) =
            find_member(btf, &current, field)?.ok_or_else(|| OffsetError::NoField {
                ty: ty.to_string(),
                field: path.to_string(),
            })?;
        offset_bits += bits;
        current = member_ty;
    }
    Ok(offset_bits / 8)
}

/// Find `name` among the members of `ty` (a struct or union), descending into
/// anonymous members. Returns the bit offset and the member's resolved type.
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, OffsetError> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for member in members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let Ok(member_ty) = btf.resolve_chained_type(member) else {
            continue;
        };
        let member_ty = strip_modifiers(btf, member_ty);
        if member_name == name {
            if member.bitfield_size().is_some_and(|size| size != 0) {
                return Err(OffsetError::BitField(name.to_string()));
            }
            return Ok(Some((member.bit_offset(), member_ty)));
        }
        if member_name.is_empty() {
            if let Some((bits, found)) = find_member(btf, &member_ty, name)? {
                return Ok(Some((member.bit_offset() + bits, found)));
            }
        }
    }
    Ok(None)
}

/// Look through typedefs and qualifiers to the underlying type.
fn strip_modifiers(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(next) => ty = next,
            Err(_) => return ty,
        }
    }
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_what_fits_and_rejects_what_cannot() {
        let mut off = SockOffsets::UNSET;
        (
            off.skc_daddr,
            off.skc_rcv_saddr,
            off.skc_dport,
            off.skc_num,
            off.skc_family,
        ) = (0, 4, 12, 14, 16);
        (off.skc_net, off.skc_v6_daddr, off.skc_v6_rcv_saddr) = (48, 56, 72);
        let fitted = fit_window(off).expect("the 6.18 layout fits");
        assert_eq!(fitted.common_base, 0);
        assert_eq!(fitted.skc_v6_rcv_saddr, 72);
        off.skc_v6_rcv_saddr = 200; // out of the window: IPv6 addresses dropped, not wrong
        let fitted = fit_window(off).unwrap();
        assert_eq!(
            (fitted.skc_v6_daddr, fitted.skc_v6_rcv_saddr),
            (NO_OFFSET, NO_OFFSET)
        );
        off.skc_family = 300;
        assert!(matches!(fit_window(off), Err(OffsetError::Window)));
    }

    /// Reads this machine's BTF when it has one; the offsets must be plausible
    /// and distinct. Skips (with a message) on a machine without BTF.
    #[test]
    fn resolves_sock_offsets_from_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("no {}: skipped", path.display());
            return;
        }
        let btf = open(path).expect("BTF parses");
        let off = sock_offsets(&btf).expect("offsets resolve on this kernel");
        // struct sock_common is the first member of struct sock.
        assert!(off.skc_family < 64, "skc_family at {}", off.skc_family);
        assert_eq!(off.skc_dport + 2, off.skc_num, "skc_dport then skc_num");
        assert_eq!(off.skc_daddr + 4, off.skc_rcv_saddr);
        assert!(off.sk_protocol > off.skc_v6_rcv_saddr);
        assert_ne!(off.skc_net, NO_OFFSET);
        assert_ne!(off.net_inum, NO_OFFSET);
        assert_ne!(off.sk_socket, NO_OFFSET);
        assert_ne!(off.skc_v6_daddr, NO_OFFSET, "IPv6 fits the window");
        assert!(off.skc_v6_daddr + 16 - off.common_base <= COMMON_WINDOW as u32);
        assert!(off.socket_ino > 0 && off.socket_ino != NO_OFFSET);
        assert_eq!(
            off.skc_state,
            off.skc_family + 2,
            "skc_family then skc_state"
        );
        // x86_64's pt_regs: r15 ... orig_ax, ip, cs, flags, sp, ss.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(regs_sp_offset(&btf), Some(19 * 8));
        assert_eq!(regs_ip_bp_offsets(&btf), Some((16 * 8, 4 * 8)));
    }
}
