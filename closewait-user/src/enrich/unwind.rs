//! Full stacks for code built without frame pointers.
//!
//! The kernel's frame-pointer walk stops at the first frame of such code.
//! For those processes the kernel program also copies the top of the user
//! stack with the registers at the syscall ([`StackCopy`], as perf's DWARF
//! mode does); here that copy is unwound with the call-frame information
//! the binaries carry for exceptions (`.eh_frame`, found through
//! `.eh_frame_hdr`), by framehop, the unwinder samply is built on.
//!
//! The binaries are the live process's executable mappings, opened through
//! `/proc/PID/map_files` (the file the process maps, in whatever mount
//! namespace). Their unwind sections are read once per file (device, inode,
//! size, mtime) and kept for later processes mapping the same file.
//!
//! Best effort, never a panic: a frame with no unwind information, a stack
//! that leaves the copy, a binary that cannot be read all end the stack
//! there.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;

use closewait_common::StackCopy;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder as _};
use object::{Object, ObjectSection, ObjectSegment};

use super::stacks::{read_maps, Mapping};

/// Frames kept of an unwound stack (perf's default is 127).
const MAX_FRAMES: usize = 64;
/// Unwind sections larger than this are not read (a 64 MiB `.eh_frame`
/// would be a binary of gigabytes).
const MAX_SECTION: u64 = 64 << 20;
/// Files whose sections are cached before the cache is cleared.
const MAX_CACHED_FILES: usize = 256;

/// What identifies a file's contents without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
}

/// The parts of an ELF file the unwinder needs.
#[derive(Debug)]
struct Sections {
    text: Option<Range<u64>>,
    eh_frame: Option<(Range<u64>, Rc<[u8]>)>,
    eh_frame_hdr: Option<(Range<u64>, Rc<[u8]>)>,
    /// Loadable segments: (file offset, address, file size).
    segments: Vec<(u64, u64, u64)>,
}

/// Unwinds stack copies; not `Send` (keep it on the resolver thread).
#[derive(Default)]
pub struct StackUnwinder {
    files: HashMap<FileId, Option<Rc<Sections>>>,
}

impl StackUnwinder {
    /// The stack in `copy`, innermost first (the instruction pointer, then
    /// return addresses), in process `pid`'s address space; `None` when the
    /// process's mappings cannot be read.
    pub fn unwind(&mut self, pid: u32, copy: &StackCopy) -> Option<Vec<u64>> {
        let maps = read_maps(pid)?;
        let mut unwinder: UnwinderX86_64<Rc<[u8]>> = UnwinderX86_64::new();
        for m in maps.iter().filter(|m| m.executable && m.is_file()) {
            if let Some(module) = self.module(pid, m) {
                unwinder.add_module(module);
            }
        }
        Some(unwind_copy(&unwinder, copy))
    }

    fn module(&mut self, pid: u32, m: &Mapping) -> Option<Module<Rc<[u8]>>> {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let meta = std::fs::metadata(&path).ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
        };
        if self.files.len() >= MAX_CACHED_FILES && !self.files.contains_key(&id) {
            self.files.clear();
        }
        let sections = self
            .files
            .entry(id)
            .or_insert_with(|| read_sections(&path).map(Rc::new))
            .clone()?;
        let bias = load_bias(&sections.segments, m.start, m.offset)?;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: sections.text.clone(),
            eh_frame_svma: sections.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: sections.eh_frame.as_ref().map(|(_, d)| d.clone()),
            eh_frame_hdr_svma: sections.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: sections.eh_frame_hdr.as_ref().map(|(_, d)| d.clone()),
            ..Default::default()
        };
        Some(Module::new(m.path.clone(), m.start..m.end, bias, info))
    }
}

/// Unwind `copy` with the modules `unwinder` knows: reads outside the copy
/// end the stack.
fn unwind_copy(unwinder: &UnwinderX86_64<Rc<[u8]>>, copy: &StackCopy) -> Vec<u64> {
    let len = (copy.len as usize).min(copy.bytes.len());
    let stack = &copy.bytes[..len];
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let at = usize::try_from(addr.checked_sub(copy.sp).ok_or(())?).map_err(|_| ())?;
        let word = stack.get(at..at.checked_add(8).ok_or(())?).ok_or(())?;
        Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
    };
    let mut cache = CacheX86_64::new();
    let regs = UnwindRegsX86_64::new(copy.ip, copy.sp, copy.bp);
    let mut frames = unwinder.iter_frames(copy.ip, regs, &mut cache, &mut read_stack);
    let mut ips = Vec::new();
    while let Ok(Some(frame)) = frames.next() {
        ips.push(frame.address());
        if ips.len() >= MAX_FRAMES {
            break;
        }
    }
    ips
}

/// Where svma 0 of the file is in memory, from the mapping of file offset
/// `offset` at `start` and the segment that holds that offset.
fn load_bias(segments: &[(u64, u64, u64)], start: u64, offset: u64) -> Option<u64> {
    // The last that holds it: neighbouring segments share a page.
    let &(file_off, addr, _) = segments
        .iter()
        .rev()
        .find(|&&(file_off, _, size)| {
            // Mappings start at the page holding the segment's first byte.
            let first_page = file_off & !0xfff;
            offset >= first_page && offset < file_off.saturating_add(size.max(1))
        })
        .or_else(|| segments.first())?;
    // The address of file offset `offset`, as the file states it.
    let svma = addr.wrapping_sub(file_off).wrapping_add(offset);
    Some(start.wrapping_sub(svma))
}

/// The unwind sections and segments of the ELF file at `path`, reading only
/// those parts of it.
fn read_sections(path: &str) -> Option<Sections> {
    let file = File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let section = |name: &str| -> Option<(Range<u64>, Rc<[u8]>)> {
        let s = elf.section_by_name(name)?;
        if s.size() > MAX_SECTION {
            return None;
        }
        let data = s.data().ok()?;
        Some((s.address()..s.address() + s.size(), Rc::from(data)))
    };
    let text = elf
        .section_by_name(".text")
        .map(|s| s.address()..s.address() + s.size());
    let segments = elf
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, s.address(), size)
        })
        .collect();
    Some(Sections {
        text,
        eh_frame: section(".eh_frame"),
        eh_frame_hdr: section(".eh_frame_hdr"),
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use closewait_common::STACK_COPY_BYTES;

    #[test]
    fn load_bias_of_pie_and_fixed_executables() {
        // A PIE's text segment: file offset 0x1000 at address 0x1000,
        // mapped at 0x5555_5555_5000 (bias 0x5555_5555_4000).
        let pie = [
            (0, 0, 0x800),
            (0x1000, 0x1000, 0x2000),
            (0x3000, 0x3000, 0x500),
        ];
        assert_eq!(
            load_bias(&pie, 0x5555_5555_5000, 0x1000),
            Some(0x5555_5555_4000)
        );
        // A fixed-address executable maps where it says: bias 0.
        let fixed = [(0, 0x40_0000, 0x800), (0x1000, 0x40_1000, 0x2000)];
        assert_eq!(load_bias(&fixed, 0x40_1000, 0x1000), Some(0));
        // A segment that does not start on a page: offset 0x1234 at
        // 0x2234, its page mapped at 0x7000_0000_1000.
        let odd = [(0x1234, 0x2234, 0x100)];
        assert_eq!(
            load_bias(&odd, 0x7000_0000_1000, 0x1000),
            Some(0x7000_0000_1000 - 0x2000)
        );
        assert_eq!(load_bias(&[], 0x1000, 0), None);
        // Two segments in one page (as lld lays them out): the mapping of
        // that page at the second's offset belongs to the second.
        let shared = [(0, 0, 0x27da84), (0x27da90, 0x27ea90, 0x71bc10)];
        assert_eq!(
            load_bias(&shared, 0x564b_7e26_5000, 0x27d000),
            Some(0x564b_7e26_5000 - 0x27e000)
        );
    }

    /// Fill `copy` as the kernel does at a syscall: the registers and the
    /// top of this thread's stack, taken here (a small frame: the copy is
    /// on the heap).
    #[inline(never)]
    fn copy_own_stack(copy: &mut StackCopy) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        copy.ip = ip;
        copy.sp = sp;
        copy.bp = bp;
        copy.tgid = std::process::id();
        copy.len = STACK_COPY_BYTES as u32;
        // SAFETY: the stack above our own stack pointer is ours and mapped
        // (a test thread's stack is far larger than the copy).
        let above = unsafe { std::slice::from_raw_parts(sp as *const u8, STACK_COPY_BYTES) };
        copy.bytes.copy_from_slice(above);
    }

    #[inline(never)]
    fn caller_of_the_copy(copy: &mut StackCopy) {
        copy_own_stack(std::hint::black_box(copy));
    }

    fn own_copy() -> Box<StackCopy> {
        // SAFETY: all zeros is a valid StackCopy (plain integers).
        let mut copy = unsafe { Box::<StackCopy>::new_zeroed().assume_init() };
        caller_of_the_copy(&mut copy);
        copy
    }

    fn names(ips: &[u64]) -> Vec<String> {
        super::super::stacks::Symbolizer::new()
            .symbolize(std::process::id(), ips)
            .frames
            .iter()
            .filter_map(|f| f.symbol.clone())
            .collect()
    }

    #[test]
    fn own_stack_unwinds_through_its_callers() {
        let copy = own_copy();
        let ips = StackUnwinder::default()
            .unwind(std::process::id(), &copy)
            .expect("own maps");
        assert_eq!(ips.first(), Some(&copy.ip));
        let names = names(&ips);
        for f in ["copy_own_stack", "caller_of_the_copy", "own_copy"] {
            assert!(names.iter().any(|n| n.ends_with(f)), "{f}: {names:?}");
        }
    }

    #[test]
    fn a_copy_cut_short_ends_the_stack_without_error() {
        let mut copy = own_copy();
        copy.len = 16;
        let ips = StackUnwinder::default()
            .unwind(std::process::id(), &copy)
            .expect("own maps");
        assert!(!ips.is_empty() && ips.len() <= 3, "{ips:x?}");
        copy.len = u32::MAX; // longer than the buffer: clamped
        let _ = StackUnwinder::default().unwind(std::process::id(), &copy);
        assert!(StackUnwinder::default().unwind(u32::MAX, &copy).is_none());
    }
}
