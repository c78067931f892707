//! The caller a frame-pointer walk skips.
//!
//! At connect() and accept() the kernel is inside a syscall wrapper of the C
//! library. glibc's wrappers execute `syscall` without setting up a frame, so
//! the walk (`bpf_get_stackid`, which follows `rbp`) goes from the wrapper
//! straight to its caller's caller: the function that called connect() is
//! exactly the one missing. Its return address is still on the user stack,
//! a few words above the stack pointer; the kernel program copies those
//! words with the creation record. Here each word is checked in the
//! creator's address space (an address in an executable mapping, right after
//! a call instruction) and the first that passes, when the walk does not
//! have it already, becomes the second frame.

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt};

/// Finds callers in live processes; keeps each process's mappings for one
/// batch of lookups ([`Callers::forget`] between batches).
#[derive(Default)]
pub struct Callers {
    code: HashMap<u32, Option<Code>>,
}

impl Callers {
    /// `ips` (the frame-pointer walk, innermost first) with the wrapper's
    /// caller put back, as found among `words` in process `pid`'s memory.
    pub fn with_caller(&mut self, pid: u32, ips: &[u64], words: &[u64]) -> Vec<u64> {
        if words.iter().all(|&w| w == 0) {
            return ips.to_vec();
        }
        let Some(code) = self.code.entry(pid).or_insert_with(|| Code::of(pid)) else {
            return ips.to_vec();
        };
        restore(ips, words, |addr| code.follows_call(addr))
    }

    /// Drop what was read: mappings change.
    pub fn forget(&mut self) {
        self.code.clear();
    }
}

/// The pure part: the first word that `is_return` accepts goes after the
/// first frame, unless the walk has it already.
///
/// Only the first: the wrapper's own frame is small and holds no code
/// addresses, so the first return address above the stack pointer is the
/// one into its caller; the words after it are that caller's locals, where
/// stale return addresses of calls made earlier (seen: a return into a
/// parser called before connect()) pass every check but are not frames.
/// Code without a frame of its own that calls the wrapper through another
/// frameless function (JIT code called from C, say) loses the second one.
pub fn restore(ips: &[u64], words: &[u64], is_return: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut out = ips.to_vec();
    if ips.is_empty() {
        return out;
    }
    let found = words.iter().copied().find(|&w| w != 0 && is_return(w));
    if let Some(caller) = found.filter(|c| !ips.contains(c)) {
        out.insert(1, caller);
    }
    out
}

/// Whether the bytes right before a return address end in a call
/// instruction: `tail` holds the 7 bytes before it (x86-64: `e8 rel32`, or
/// `ff /2` with any addressing form, 2 to 7 bytes).
pub fn ends_in_call(tail: &[u8; 7]) -> bool {
    // Direct call: e8 and a 32-bit displacement.
    if tail[2] == 0xe8 {
        return true;
    }
    // Indirect call: ff, a ModRM byte whose reg field is 2, and whatever the
    // ModRM (and SIB) say follows; the instruction must end right here.
    (2..=7).any(|len| {
        let at = 7 - len;
        if tail[at] != 0xff {
            return false;
        }
        let modrm = tail[at + 1];
        if (modrm >> 3) & 7 != 2 {
            return false;
        }
        let (mode, rm) = (modrm >> 6, modrm & 7);
        let sib = rm == 4 && mode != 3;
        let sib_base_disp = sib && mode == 0 && at + 2 < 7 && tail[at + 2] & 7 == 5;
        let disp = match mode {
            0 if rm == 5 => 4,
            0 if sib_base_disp => 4,
            0 => 0,
            1 => 1,
            2 => 4,
            _ => 0,
        };
        2 + usize::from(sib) + disp == len
    })
}

/// A process's executable mappings and its memory.
struct Code {
    ranges: Vec<(u64, u64)>,
    mem: File,
}

impl Code {
    fn of(pid: u32) -> Option<Code> {
        // procfs's maps parser fails the whole file on one non-UTF-8 path.
        let ranges = super::stacks::executable_ranges(pid)?;
        let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
        Some(Code { ranges, mem })
    }

    fn follows_call(&self, addr: u64) -> bool {
        let Some(start) = addr.checked_sub(7) else {
            return false;
        };
        // The call instruction lies in the same mapping as its return.
        if !self.ranges.iter().any(|&(lo, hi)| lo <= start && addr < hi) {
            return false;
        }
        let mut tail = [0u8; 7];
        self.mem.read_exact_at(&mut tail, start).is_ok() && ends_in_call(&tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(bytes: &[u8]) -> [u8; 7] {
        let mut t = [0x90u8; 7];
        t[7 - bytes.len()..].copy_from_slice(bytes);
        t
    }

    #[test]
    fn call_instructions_are_recognised() {
        assert!(ends_in_call(&tail(&[0xe8, 1, 2, 3, 4])), "call rel32");
        assert!(ends_in_call(&tail(&[0xff, 0xd0])), "call *%rax");
        assert!(ends_in_call(&tail(&[0x41, 0xff, 0xd4])), "call *%r12");
        assert!(
            ends_in_call(&tail(&[0xff, 0x15, 1, 2, 3, 4])),
            "call *x(%rip)"
        );
        assert!(ends_in_call(&tail(&[0xff, 0x50, 0x08])), "call *8(%rax)");
        assert!(ends_in_call(&tail(&[0xff, 0x14, 0x24])), "call *(%rsp)");
        assert!(
            ends_in_call(&tail(&[0xff, 0x54, 0x24, 0x08])),
            "call *8(%rsp)"
        );
        assert!(
            ends_in_call(&tail(&[0xff, 0x94, 0x24, 1, 2, 3, 4])),
            "call *x(%rsp)"
        );
        assert!(
            ends_in_call(&tail(&[0xff, 0x90, 1, 2, 3, 4])),
            "call *x(%rax)"
        );
    }

    #[test]
    fn other_instructions_are_not_calls() {
        assert!(!ends_in_call(&tail(&[0x90, 0x90])), "nops");
        assert!(
            !ends_in_call(&tail(&[0xff, 0xe0])),
            "jmp *%rax: reg field 4"
        );
        assert!(
            !ends_in_call(&tail(&[0xff, 0xd0, 0x90])),
            "a call, then one more byte"
        );
        assert!(
            !ends_in_call(&tail(&[0xff, 0x15, 1, 2])),
            "call *x(%rip) cut short"
        );
        assert!(!ends_in_call(&tail(&[0xcc; 7])), "int3 padding");
    }

    #[test]
    fn return_addresses_go_after_the_first_frame() {
        let is_return = |w: u64| w >= 0x1000;
        // glibc's threaded path: three words of locals, then the return.
        let words = [0x7, 0x20, 0x0, 0x5555, 0x30, 0x9999, 0x6666];
        assert_eq!(
            restore(&[0x100, 0x9999], &words, is_return),
            [0x100, 0x5555, 0x9999]
        );
        // A wrapper with a frame: the walk has its caller already.
        assert_eq!(
            restore(&[0x100, 0x5555, 0x9999], &words, is_return),
            [0x100, 0x5555, 0x9999]
        );
        // Later words are the caller's locals: a stale return address there
        // is not a frame.
        let words = [0x5555, 0x8, 0x7777, 0x9999];
        assert_eq!(
            restore(&[0x100, 0x9999], &words, is_return),
            [0x100, 0x5555, 0x9999]
        );
        // Nothing readable, or nothing that passes: the walk as it was.
        assert_eq!(restore(&[0x100], &[0; 8], is_return), [0x100]);
        assert_eq!(restore(&[0x100], &[1, 2, 3], is_return), [0x100]);
        assert!(restore(&[], &words, is_return).is_empty());
    }

    #[test]
    fn return_addresses_are_checked_in_the_process_memory() {
        // An executable page of this process holding a call and nops.
        // SAFETY: a fresh anonymous mapping, written before it is made
        // executable, never run, unmapped at the end.
        unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            let bytes = std::slice::from_raw_parts_mut(page as *mut u8, 4096);
            bytes.fill(0x90);
            bytes[100..105].copy_from_slice(&[0xe8, 1, 2, 3, 4]);
            assert_eq!(
                libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
            let base = page as u64;
            let code = Code::of(std::process::id()).expect("our own maps");
            assert!(code.follows_call(base + 105), "right after the call");
            assert!(!code.follows_call(base + 106), "one byte on");
            assert!(
                !code.follows_call(base + 3),
                "the call would start before the page"
            );
            assert!(!code.follows_call(0x10), "unmapped");
            let data = Box::new(0u64);
            assert!(
                !code.follows_call(&*data as *const u64 as u64 + 7),
                "heap: not executable"
            );
            libc::munmap(page, 4096);
        }
    }
}
