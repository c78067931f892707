//! Symbolization of user-space stacks captured in the kernel.
//!
//! The eBPF program records, for every socket it follows, the user stack of
//! the code that created it (`bpf_get_stackid` with `BPF_F_USER_STACK`): a list
//! of instruction pointers, innermost first, valid in the address space of the
//! process that called connect()/accept(). [`Symbolizer::symbolize`] turns
//! that list into function names, source locations and modules with
//! [blazesym], reading the live process's `/proc/PID/maps` (blazesym's
//! `Source::Process`), so the process must still exist when it is called.
//!
//! Conventions:
//! - The first address is the exact instruction pointer (the instruction after
//!   the `syscall`); every following one is a return address, which points
//!   just past a call instruction. Those are looked up at `addr - 1`, so that
//!   the line reported is the one of the call and a call that ends a function
//!   is not attributed to the next function. [`Frame::addr`] is always the
//!   address as captured.
//! - Zero addresses (the padding of a BPF stack-trace map entry) are ignored.
//! - Functions inlined at an address come out as frames of their own, innermost
//!   first, all with the same `addr`, followed by the frame of the function
//!   they were inlined into (as `addr2line -i` or gdb show them). So a stack
//!   has one frame per address plus one per inlined call.
//! - [`Frame::symbol`] is demangled (Rust legacy and v0, C++), without Rust's
//!   `::h0123456789abcdef` hash suffix; [`Frame::file`] is the source path
//!   as the debug information gives it (the compilation directory joined with
//!   the file name, usually absolute); [`Frame::module`] is the mapping's path as
//!   `/proc/PID/maps` shows it (the path inside the process's mount
//!   namespace, without a " (deleted)" suffix; `[vdso]` for the vDSO).
//!
//! Everything in here is best effort and never panics: an address that cannot
//! be resolved yields a frame with only `addr` (and `module` when the address
//! lies in a mapping of the live process).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::rc::Rc;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized, Symbolizer as BlazeSymbolizer};
use blazesym::ErrorKind;

use super::perf_map::PerfMap;

/// One frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    pub addr: u64,
    /// Demangled (Rust and C++), without the Rust hash suffix.
    pub symbol: Option<String>,
    /// Source file path, when debug info exists.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the ELF object (executable or shared library) containing addr.
    pub module: Option<String>,
}

/// A symbolized stack, innermost frame first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// The walk did not reach a program entry point (_start, __libc_start_main,
    /// __libc_start_call_main, start_thread, clone, clone3, thread_start,
    /// std::rt::lang_start...): frames are missing, e.g. no frame pointers.
    pub truncated: bool,
}

/// The symbol/source part of a frame, as cached per (pid, lookup address).
#[derive(Clone, Debug, PartialEq, Eq)]
struct FrameInfo {
    symbol: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    module: Option<String>,
}

impl FrameInfo {
    fn to_frame(&self, addr: u64) -> Frame {
        Frame {
            addr,
            symbol: self.symbol.clone(),
            file: self.file.clone(),
            line: self.line,
            module: self.module.clone(),
        }
    }
}

/// What identifies one process image behind a pid, to notice pid reuse and
/// exec(): the start time (field 22 of /proc/PID/stat) and the executable's
/// device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Generation {
    start_time: u64,
    exe: Option<(u64, u64)>,
}

/// Bookkeeping for one pid we have symbolized addresses of.
#[derive(Debug)]
struct PidState {
    generation: Option<Generation>,
    /// `/proc/PID/map_files/START-END` paths that blazesym's file cache has
    /// an entry for because of this pid; evicted with the pid.
    map_files: HashSet<PathBuf>,
    last_used: u64,
}

/// Entries of the per-(pid, address) cache before it is cleared.
const MAX_CACHED_ADDRS: usize = 16 * 1024;
/// Pids tracked (with their blazesym cache entries) before old ones are
/// evicted.
const MAX_TRACKED_PIDS: usize = 256;

/// Turns captured user stacks into frames. Not `Send` (blazesym's symbolizer
/// is not): keep it on one thread.
///
/// Caching: one blazesym symbolizer is kept for the whole run. Its file cache
/// is keyed by the file's identity (device, inode, size, mtime), so an
/// executable or library is opened, memory-mapped and parsed (ELF symbols,
/// DWARF) once, however many processes map it; the per-process paths that
/// lead to it (`/proc/PID/map_files/...`) are small entries, evicted together
/// with the pid. Results are also cached per (pid, address). Memory stays
/// bounded: the address cache is cleared when it exceeds
/// [`MAX_CACHED_ADDRS`] entries, and when more than [`MAX_TRACKED_PIDS`] pids
/// are tracked, the pids whose process is gone, then the least recently used
/// ones, are evicted from both caches (a binary's parsed data is dropped when
/// no tracked pid refers to it any more).
pub struct Symbolizer {
    inner: BlazeSymbolizer,
    /// Open ELF files through `/proc/PID/map_files/` (works across mount
    /// namespaces and for deleted files, needs CAP_SYS_ADMIN) rather than
    /// through the path names in `/proc/PID/maps`.
    map_files: bool,
    cache: HashMap<(u32, u64), Rc<[FrameInfo]>>,
    pids: HashMap<u32, PidState>,
    tick: u64,
    max_cached_addrs: usize,
    max_tracked_pids: usize,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Self::with_limits(MAX_CACHED_ADDRS, MAX_TRACKED_PIDS)
    }

    fn with_limits(max_cached_addrs: usize, max_tracked_pids: usize) -> Symbolizer {
        let inner = BlazeSymbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .enable_auto_reload(true)
            .build();
        Symbolizer {
            inner,
            map_files: map_files_usable(),
            cache: HashMap::new(),
            pids: HashMap::new(),
            tick: 0,
            max_cached_addrs: max_cached_addrs.max(1),
            max_tracked_pids: max_tracked_pids.max(1),
        }
    }

    /// Symbolize addresses of live process `pid` (via /proc/PID/maps, as
    /// blazesym's Process source does). Never panics; an address that cannot
    /// be symbolized yields a Frame with only addr (and module if known).
    pub fn symbolize(&mut self, pid: u32, addrs: &[u64]) -> Stack {
        self.tick += 1;
        // (captured address, address to look up): return addresses point
        // after their call instruction, see the module documentation.
        let wanted: Vec<(u64, u64)> = addrs
            .iter()
            .enumerate()
            .filter(|(_, &addr)| addr != 0)
            .map(|(i, &addr)| (addr, if i == 0 { addr } else { addr - 1 }))
            .collect();
        // pid 0 is the kernel's idle task, and blazesym's Pid::from(0) would
        // mean "this process": there is nothing to look up.
        if pid == 0 {
            let frames = wanted
                .iter()
                .map(|&(addr, _)| FrameInfo::unknown(None).to_frame(addr))
                .collect();
            return Stack {
                frames,
                truncated: true,
            };
        }

        let alive = self.check_generation(pid);

        let mut missing: Vec<u64> = wanted
            .iter()
            .map(|&(_, lookup)| lookup)
            .filter(|lookup| !self.cache.contains_key(&(pid, *lookup)))
            .collect();
        missing.sort_unstable();
        missing.dedup();

        let mut fresh: HashMap<u64, Rc<[FrameInfo]>> = HashMap::new();
        if !missing.is_empty() && alive {
            fresh = self.resolve(pid, &missing);
        }

        let mut frames = Vec::with_capacity(wanted.len());
        for &(addr, lookup) in &wanted {
            let infos = self
                .cache
                .get(&(pid, lookup))
                .or_else(|| fresh.get(&lookup))
                .cloned();
            match infos {
                Some(infos) => frames.extend(infos.iter().map(|info| info.to_frame(addr))),
                None => frames.push(FrameInfo::unknown(None).to_frame(addr)),
            }
        }

        if !fresh.is_empty() {
            if self.cache.len() + fresh.len() > self.max_cached_addrs {
                self.cache.clear();
            }
            for (lookup, infos) in fresh {
                self.cache.insert((pid, lookup), infos);
            }
        }
        if let Some(state) = self.pids.get_mut(&pid) {
            state.last_used = self.tick;
        }
        self.enforce_pid_limit(pid);

        let truncated = !frames.iter().any(is_entry_point);
        Stack { frames, truncated }
    }

    /// Notice a new process behind `pid` (pid reuse, exec) and forget what we
    /// know about the old one. Returns whether the process is alive.
    fn check_generation(&mut self, pid: u32) -> bool {
        let current = read_generation(pid);
        let known = self.pids.get(&pid).map(|state| state.generation);
        match (known, current) {
            // Gone: keep what we cached while it was alive.
            (_, None) => false,
            (Some(old), Some(new)) if old == Some(new) => true,
            (Some(_), Some(new)) => {
                self.evict_pids(&[pid]);
                self.track(pid, new);
                true
            }
            (None, Some(new)) => {
                self.track(pid, new);
                true
            }
        }
    }

    fn track(&mut self, pid: u32, generation: Generation) {
        self.pids.insert(
            pid,
            PidState {
                generation: Some(generation),
                map_files: HashSet::new(),
                last_used: self.tick,
            },
        );
    }

    /// Look up `lookups` (sorted, unique) in process `pid`.
    fn resolve(&mut self, pid: u32, lookups: &[u64]) -> HashMap<u64, Rc<[FrameInfo]>> {
        let mut out = HashMap::new();
        let maps = match read_maps(pid) {
            Some(maps) => maps,
            // The process went away in the meantime: nothing to cache.
            None => return out,
        };

        // Only addresses in executable mappings of files (or the vDSO) go to
        // blazesym; executable anonymous memory is JIT code, named by the
        // runtime's perf map if it has one; anything else cannot be code we
        // can name.
        let mut batch: Vec<u64> = Vec::new();
        let mut batch_modules: Vec<Option<String>> = Vec::new();
        let mut used_map_files: Vec<PathBuf> = Vec::new();
        let mut perf_map: Option<PerfMap> = None;
        for &lookup in lookups {
            match find_mapping(&maps, lookup) {
                Some(m) if m.executable && m.is_anonymous() => {
                    let jit = perf_map.get_or_insert_with(|| PerfMap::of(pid).unwrap_or_default());
                    let mut info = FrameInfo::unknown(None);
                    info.symbol = jit.lookup(lookup).map(str::to_string);
                    out.insert(lookup, Rc::from([info]));
                }
                Some(m) if m.executable && (m.is_file() || m.path == "[vdso]") => {
                    batch.push(lookup);
                    batch_modules.push(m.module());
                    if m.is_file() {
                        used_map_files.push(PathBuf::from(format!(
                            "/proc/{pid}/map_files/{:x}-{:x}",
                            m.start, m.end
                        )));
                    }
                }
                Some(m) => {
                    out.insert(lookup, Rc::from([FrameInfo::unknown(m.module())]));
                }
                None => {
                    out.insert(lookup, Rc::from([FrameInfo::unknown(None)]));
                }
            }
        }
        if batch.is_empty() {
            return out;
        }

        let results = self.blazesym_lookup(pid, &batch);
        // blazesym's file cache now has entries under these paths (in
        // /proc/PID/maps mode, under the binaries' own paths, which are
        // bounded by the number of distinct binaries).
        if self.map_files {
            if let Some(state) = self.pids.get_mut(&pid) {
                state.map_files.extend(used_map_files);
            }
        }
        for ((lookup, module), result) in batch.into_iter().zip(batch_modules).zip(results) {
            let infos = match result {
                Some(sym) => frame_infos(sym, module),
                None => Rc::from([FrameInfo::unknown(module)]),
            };
            out.insert(lookup, infos);
        }
        out
    }

    /// Symbolize `addrs` (sorted) in `pid` with blazesym: one entry per
    /// address, `None` where it failed.
    fn blazesym_lookup(&mut self, pid: u32, addrs: &[u64]) -> Vec<Option<Sym<'static>>> {
        let source = |map_files: bool| {
            let mut process = Process::new(pid.into());
            process.debug_syms = true;
            // Perf maps (/tmp/perf-PID.map, for JIT compilers) are files that
            // the traced process controls: a FIFO there would block this
            // (root) tool in open(). perf_map.rs reads them with care.
            process.perf_map = false;
            process.map_files = map_files;
            process.vdso = true;
            Source::Process(process)
        };

        let src = source(self.map_files);
        let mut result = self.inner.symbolize(&src, Input::AbsAddr(addrs));
        if let Err(err) = &result {
            if self.map_files && err.kind() == ErrorKind::PermissionDenied {
                // No CAP_SYS_ADMIN after all: use the paths in /proc/PID/maps.
                self.map_files = false;
                result = self.inner.symbolize(&source(false), Input::AbsAddr(addrs));
            }
        }
        let src = source(self.map_files);
        match result {
            Ok(syms) if syms.len() == addrs.len() => syms
                .into_iter()
                .map(|s| match s {
                    Symbolized::Sym(sym) => Some(sym.into_owned()),
                    Symbolized::Unknown(_) => None,
                })
                .collect(),
            // The batch fails as a whole when one file cannot be used (e.g.
            // unreadable or not an ELF file): go address by address, so that
            // the others still get their names.
            Ok(_) | Err(_) => addrs
                .iter()
                .map(
                    |&addr| match self.inner.symbolize_single(&src, Input::AbsAddr(addr)) {
                        Ok(Symbolized::Sym(sym)) => Some(sym.into_owned()),
                        Ok(Symbolized::Unknown(_)) | Err(_) => None,
                    },
                )
                .collect(),
        }
    }

    /// Keep the number of tracked pids bounded: evict the pids whose process
    /// is gone (or is another one now), then the least recently used ones.
    /// `current` (the pid just symbolized) is kept.
    fn enforce_pid_limit(&mut self, current: u32) {
        if self.pids.len() <= self.max_tracked_pids {
            return;
        }
        let mut victims: Vec<u32> = self
            .pids
            .iter()
            .filter(|(&pid, state)| pid != current && read_generation(pid) != state.generation)
            .map(|(&pid, _)| pid)
            .collect();
        let target = self.max_tracked_pids - self.max_tracked_pids / 4;
        if self.pids.len() - victims.len() > target {
            let gone: HashSet<u32> = victims.iter().copied().collect();
            let mut alive: Vec<(u64, u32)> = self
                .pids
                .iter()
                .filter(|(pid, _)| **pid != current && !gone.contains(*pid))
                .map(|(&pid, state)| (state.last_used, pid))
                .collect();
            alive.sort_unstable();
            let excess = self.pids.len() - victims.len() - target.max(1);
            victims.extend(alive.into_iter().take(excess).map(|(_, pid)| pid));
        }
        self.evict_pids(&victims);
    }

    /// Forget everything cached for `pids`, in blazesym too.
    fn evict_pids(&mut self, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let set: HashSet<u32> = pids.iter().copied().collect();
        for pid in pids {
            if let Some(state) = self.pids.remove(pid) {
                for path in state.map_files {
                    let _ = self
                        .inner
                        .evict(&blazesym::symbolize::evict::Elf::new(path).into());
                }
                let _ = self
                    .inner
                    .evict(&blazesym::symbolize::evict::Process::new((*pid).into()).into());
            }
        }
        self.cache.retain(|(pid, _), _| !set.contains(pid));
    }
}

impl FrameInfo {
    fn unknown(module: Option<String>) -> FrameInfo {
        FrameInfo {
            symbol: None,
            file: None,
            line: None,
            module,
        }
    }
}

/// The frames for one symbolized address: inlined functions innermost first,
/// then the function they sit in. blazesym reports `inlined` outermost first,
/// each with the location inside it, and `code_info` as the location in the
/// outer function (the call site of the first inlined function).
fn frame_infos(sym: Sym<'static>, module: Option<String>) -> Rc<[FrameInfo]> {
    let mut infos = Vec::with_capacity(1 + sym.inlined.len());
    for inlined in sym.inlined.iter().rev() {
        let (file, line) = location(inlined.code_info.as_ref());
        infos.push(FrameInfo {
            symbol: Some(clean_symbol(&inlined.name)),
            file,
            line,
            module: module.clone(),
        });
    }
    let (file, line) = location(sym.code_info.as_deref());
    infos.push(FrameInfo {
        symbol: Some(clean_symbol(&sym.name)).filter(|s| !s.is_empty()),
        file,
        line,
        module,
    });
    Rc::from(infos)
}

fn location(code_info: Option<&CodeInfo<'_>>) -> (Option<String>, Option<u32>) {
    match code_info {
        Some(info) => {
            let path = info.to_path();
            let file = path.to_string_lossy().into_owned();
            let file = (!file.is_empty()).then_some(file);
            (file, info.line.filter(|&line| line != 0))
        }
        None => (None, None),
    }
}

/// Remove Rust's hash suffix (`::h` and 16 hex digits) that demangling leaves
/// when a symbol was not recognized as Rust (e.g. demangled as C++).
fn clean_symbol(name: &str) -> String {
    strip_rust_hash(name).to_string()
}

fn strip_rust_hash(name: &str) -> &str {
    if let Some(pos) = name.rfind("::h") {
        let hash = &name[pos + 3..];
        if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return &name[..pos];
        }
    }
    name
}

/// Whether frame `f` is a program or thread entry point: a stack that
/// contains one was walked completely.
fn is_entry_point(f: &Frame) -> bool {
    f.symbol.as_deref().is_some_and(is_entry_symbol)
}

fn is_entry_symbol(symbol: &str) -> bool {
    const EXACT: &[&str] = &[
        "_start",
        "__libc_start_main",
        "__libc_start_call_main",
        "__libc_start_main_impl",
        "libc_start_main_stage2", // musl
        "start_thread",
        "clone",
        "__clone",
        "clone3",
        "__clone3",
        "__clone_internal",
        "thread_start",
        "runtime.goexit", // Go
        "runtime.main",
        "runtime.mstart",
    ];
    if EXACT.contains(&symbol) {
        return true;
    }
    // Rust: std::rt::lang_start, std::rt::lang_start_internal,
    // std::rt::lang_start::{{closure}}, and the thread trampoline
    // std::sys::pal::unix::thread::Thread::new::thread_start (its path moves
    // between Rust versions).
    symbol.starts_with("std::rt::lang_start")
        || (symbol.starts_with("std::") && symbol.ends_with("::thread_start"))
}

/// The first `n` frames that belong to the application's own code: skip frames
/// whose module is libc/libpthread/ld-linux/libstdc++/libgcc, and Rust
/// std/core/alloc frames (symbols starting with std::, core::, alloc::, <std::,
/// <core::, <alloc::), and frames with no symbol. Innermost first.
///
/// Trait implementations count as std when the type is one of std's, also
/// behind a reference, pointer or `dyn` (`<&dyn core::ops::Fn<()> as
/// core::ops::FnOnce<()>>::call_once`); `<app::Conn as core::ops::Drop>::drop`
/// is application code. Also skipped: musl's libc and loader, the vDSO, and
/// the entry points (`_start`, `__libc_start_main`, ..., see
/// [`Stack::truncated`]), which are linked into executables but are not
/// application code.
pub fn app_frames(stack: &Stack, n: usize) -> Vec<&Frame> {
    stack
        .frames
        .iter()
        .filter(|f| is_app_frame(f))
        .take(n)
        .collect()
}

fn is_app_frame(f: &Frame) -> bool {
    let Some(symbol) = f.symbol.as_deref() else {
        return false;
    };
    if f.module.as_deref().is_some_and(is_system_module) {
        return false;
    }
    !is_rust_runtime(symbol) && !is_entry_symbol(symbol)
}

/// Rust std/core/alloc code: `std::...`, `core::...`, `alloc::...`, and trait
/// implementations on their types, `<std::...` etc., also when the type is a
/// reference, pointer or trait object (`<&dyn core::ops::Fn<..> as ..>`).
/// `<app::Conn as core::ops::Drop>::drop` is application code.
fn is_rust_runtime(symbol: &str) -> bool {
    const CRATES: &[&str] = &["std::", "core::", "alloc::"];
    let self_type = match symbol.strip_prefix('<') {
        Some(mut rest) => {
            for prefix in ["&mut ", "&", "*const ", "*mut ", "dyn ", "["] {
                rest = rest.strip_prefix(prefix).unwrap_or(rest);
            }
            rest.strip_prefix("dyn ").unwrap_or(rest)
        }
        None => symbol,
    };
    CRATES.iter().any(|c| self_type.starts_with(c))
}

/// libc, libpthread, the dynamic loader, libstdc++, libgcc and the vDSO.
fn is_system_module(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    const PREFIXES: &[&str] = &[
        "libc.so",
        "libc-", // libc-2.31.so
        "libc.musl",
        "libpthread.so",
        "libpthread-",
        "ld-linux",
        "ld-musl",
        "ld.so",
        "libstdc++.so",
        "libgcc_s.so",
        "libgcc_s-",
        "[vdso]",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// A one-line description of a frame:
///
/// - `pool::checkout (src/pool.rs:88)`: symbol and source location. The file
///   is shortened to its last two path components (directory and file name),
///   which is what identifies it in practice (`src/pool.rs`,
///   `leakers/leaker.c`, `net/tcp.rs`); the whole path is in
///   [`Frame::file`].
/// - `pool::checkout (src/pool.rs)` when the line is unknown.
/// - `pool::checkout` without debug info.
/// - `0x7f12deadbeef (libfoo.so)` without a symbol: the address and the file
///   name of the module; `0x7f12deadbeef` if the module is unknown too.
///
/// The label is raw: symbol names and paths come from the traced program;
/// outputs escape it where they print it (`output::sanitize`).
pub fn frame_label(f: &Frame) -> String {
    let label = match (&f.symbol, &f.file) {
        (Some(symbol), Some(file)) => match f.line {
            Some(line) => format!("{symbol} ({}:{line})", short_path(file)),
            None => format!("{symbol} ({})", short_path(file)),
        },
        (Some(symbol), None) => symbol.clone(),
        (None, _) => match &f.module {
            Some(module) => format!("{:#x} ({})", f.addr, file_name(module)),
            None => format!("{:#x}", f.addr),
        },
    };
    label
}

fn short_path(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    let mut cuts = trimmed.rmatch_indices('/').map(|(i, _)| i);
    match (cuts.next(), cuts.next()) {
        (Some(_), Some(second)) => &trimmed[second + 1..],
        _ => trimmed,
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(path)
}

/// Whether `/proc/PID/map_files/` entries can be followed (CAP_SYS_ADMIN or
/// CAP_CHECKPOINT_RESTORE): checked on our own process.
fn map_files_usable() -> bool {
    let Ok(mut dir) = std::fs::read_dir("/proc/self/map_files") else {
        return false;
    };
    match dir.next() {
        Some(Ok(entry)) => std::fs::metadata(entry.path()).is_ok(),
        _ => false,
    }
}

fn read_generation(pid: u32) -> Option<Generation> {
    let start_time = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?
        .starttime;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Some(Generation { start_time, exe })
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub executable: bool,
    /// The path name column ("" for anonymous memory), without " (deleted)".
    pub path: String,
}

impl Mapping {
    pub fn is_file(&self) -> bool {
        self.path.starts_with('/')
    }

    /// Memory with no file behind it (`[anon:NAME]` when named by prctl).
    fn is_anonymous(&self) -> bool {
        self.path.is_empty() || self.path.starts_with("[anon:")
    }

    fn module(&self) -> Option<String> {
        (!self.path.is_empty()).then(|| self.path.clone())
    }
}

/// procfs is not used here: it reads maps line by line as UTF-8 and fails the
/// whole file on one mapped path that is not, which a traced program controls.
/// The executable ranges of process `pid` (start, end), from the same
/// tolerant /proc/PID/maps reader the symbolizer uses.
pub(super) fn executable_ranges(pid: u32) -> Option<Vec<(u64, u64)>> {
    let maps = read_maps(pid)?;
    Some(
        maps.iter()
            .filter(|m| m.executable)
            .map(|m| (m.start, m.end))
            .collect(),
    )
}

pub(super) fn read_maps(pid: u32) -> Option<Vec<Mapping>> {
    let data = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
    Some(parse_maps(&String::from_utf8_lossy(&data)))
}

fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = text.lines().filter_map(parse_maps_line).collect();
    maps.sort_by_key(|m| m.start);
    maps
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]
    let mut rest = line;
    let mut fields = [""; 5];
    for field in &mut fields {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let (start, end) = fields[0].split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let executable = fields[1].as_bytes().get(2) == Some(&b'x');
    let offset = u64::from_str_radix(fields[2], 16).ok()?;
    let path = rest.trim_start_matches(' ');
    let path = path.strip_suffix(" (deleted)").unwrap_or(path).to_string();
    Some(Mapping {
        start,
        end,
        offset,
        executable,
        path,
    })
}

fn find_mapping(maps: &[Mapping], addr: u64) -> Option<&Mapping> {
    let idx = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(idx.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(symbol: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            addr: 0x1000,
            symbol: symbol.map(str::to_string),
            file: None,
            line: None,
            module: module.map(str::to_string),
        }
    }

    #[inline(never)]
    fn known_function_name(x: u64) -> u64 {
        std::hint::black_box(x.wrapping_mul(31).rotate_left(7))
    }

    #[test]
    fn strips_rust_hash() {
        assert_eq!(
            strip_rust_hash("pool::checkout::h0123456789abcdef"),
            "pool::checkout"
        );
        assert_eq!(
            strip_rust_hash("<T as core::fmt::Debug>::fmt::h0123456789ABCDEF"),
            "<T as core::fmt::Debug>::fmt"
        );
        // Not a hash: wrong length, not hex, or a real path segment.
        assert_eq!(
            strip_rust_hash("pool::checkout::h0123"),
            "pool::checkout::h0123"
        );
        assert_eq!(
            strip_rust_hash("a::h0123456789abcdeg"),
            "a::h0123456789abcdeg"
        );
        assert_eq!(strip_rust_hash("pool::handle"), "pool::handle");
        assert_eq!(strip_rust_hash("main"), "main");
        assert_eq!(strip_rust_hash(""), "");
    }

    #[test]
    fn app_frames_skips_runtime_and_system_frames() {
        let stack = Stack {
            frames: vec![
                frame(Some("connect"), Some("/usr/lib/x86_64-linux-gnu/libc.so.6")),
                frame(None, Some("/usr/lib/libfoo.so")),
                frame(Some("std::net::tcp::TcpStream::connect"), Some("/srv/app")),
                frame(
                    Some("<std::net::TcpStream as std::io::Read>::read"),
                    Some("/srv/app"),
                ),
                frame(
                    Some("core::ops::function::FnOnce::call_once"),
                    Some("/srv/app"),
                ),
                frame(
                    Some("<alloc::boxed::Box<F> as FnOnce>::call_once"),
                    Some("/srv/app"),
                ),
                frame(Some("alloc::vec::Vec<T>::push"), Some("/srv/app")),
                frame(Some("<core::pin::Pin<P>>::poll"), Some("/srv/app")),
                frame(
                    Some("<&dyn core::ops::Fn<()> as core::ops::FnOnce<()>>::call_once"),
                    None,
                ),
                frame(
                    Some("<&mut std::io::Stdout as std::io::Write>::flush"),
                    None,
                ),
                frame(Some("<*const [core::u8]>::len"), None),
                frame(Some("<[alloc::string::String]>::join"), None),
                frame(Some("<dyn std::any::Any>::is"), None),
                frame(Some("pool::checkout"), Some("/srv/app")),
                frame(
                    Some("operator new"),
                    Some("/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
                ),
                frame(Some("__pthread_once"), Some("/lib/libpthread.so.0")),
                frame(Some("_dl_start"), Some("/lib64/ld-linux-x86-64.so.2")),
                frame(
                    Some("_Unwind_Resume"),
                    Some("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                ),
                frame(Some("handler::serve"), None),
                frame(Some("<pool::Conn as core::ops::Drop>::drop"), None),
                frame(Some("main"), Some("/srv/app")),
                frame(
                    Some("__libc_start_call_main"),
                    Some("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                ),
                frame(Some("_start"), Some("/srv/app")),
            ],
            truncated: false,
        };
        let names = |n| {
            app_frames(&stack, n)
                .iter()
                .map(|f| f.symbol.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1), ["pool::checkout"]);
        assert_eq!(names(2), ["pool::checkout", "handler::serve"]);
        assert_eq!(
            names(10),
            [
                "pool::checkout",
                "handler::serve",
                "<pool::Conn as core::ops::Drop>::drop",
                "main"
            ]
        );
        assert!(app_frames(&stack, 0).is_empty());
        let empty = Stack {
            frames: vec![],
            truncated: true,
        };
        assert!(app_frames(&empty, 3).is_empty());
    }

    #[test]
    fn frame_label_forms() {
        let mut f = Frame {
            addr: 0x7f12_dead_beef,
            symbol: Some("pool::checkout".into()),
            file: Some("/home/me/proj/src/pool.rs".into()),
            line: Some(88),
            module: Some("/srv/app".into()),
        };
        assert_eq!(frame_label(&f), "pool::checkout (src/pool.rs:88)");
        f.line = None;
        assert_eq!(frame_label(&f), "pool::checkout (src/pool.rs)");
        f.file = Some("src/pool.rs".into());
        f.line = Some(1);
        assert_eq!(frame_label(&f), "pool::checkout (src/pool.rs:1)");
        f.file = Some("pool.rs".into());
        assert_eq!(frame_label(&f), "pool::checkout (pool.rs:1)");
        f.file = None;
        assert_eq!(frame_label(&f), "pool::checkout");
        f.symbol = None;
        f.module = Some("/usr/lib/libfoo.so".into());
        assert_eq!(frame_label(&f), "0x7f12deadbeef (libfoo.so)");
        f.module = None;
        assert_eq!(frame_label(&f), "0x7f12deadbeef");
        // Raw here: escaping is the printing output's job, done once.
        f.module = Some("/tmp/evil\x1b[31mred".into());
        assert_eq!(frame_label(&f), "0x7f12deadbeef (evil\x1b[31mred)");
    }

    #[test]
    fn truncation_is_detected() {
        let stack_of = |names: &[&str]| {
            names
                .iter()
                .map(|n| frame(Some(n), None))
                .collect::<Vec<_>>()
        };
        let reached = |frames: &[Frame]| frames.iter().any(is_entry_point);
        for entry in [
            "_start",
            "__libc_start_main",
            "__libc_start_call_main",
            "start_thread",
            "clone",
            "clone3",
            "thread_start",
            "std::rt::lang_start_internal",
            "std::rt::lang_start::{{closure}}",
            "std::sys::pal::unix::thread::Thread::new::thread_start",
        ] {
            assert!(
                reached(&stack_of(&["connect", "leak", "main", entry])),
                "{entry}"
            );
        }
        assert!(!reached(&stack_of(&[
            "connect",
            "leak_outgoing_connection"
        ])));
        assert!(!reached(&stack_of(&["connect", "main"])));
        assert!(!reached(&[]));
        assert!(!reached(&[frame(None, Some("/usr/lib/libc.so.6"))]));
        assert!(!reached(&stack_of(&["my_start", "lang_start_helper"])));
    }

    #[test]
    fn maps_parsing() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 131 /usr/bin/my app\n\
55d0c0a02000-55d0c0a08000 r-xp 00002000 08:01 131 /usr/bin/my app\n\
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n\
7f0000001000-7f0000002000 r-xp 00000000 08:01 77                         /tmp/gone (deleted)\n\
7ffd1000000-7ffd1002000 r-xp 00000000 00:00 0                          [vdso]\n\
garbage\n";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 5);
        let m = find_mapping(&maps, 0x55d0c0a02010).unwrap();
        assert!(m.executable && m.is_file());
        assert_eq!(m.module().as_deref(), Some("/usr/bin/my app"));
        let m = find_mapping(&maps, 0x55d0c0a00010).unwrap();
        assert!(!m.executable);
        let m = find_mapping(&maps, 0x7f0000000010).unwrap();
        assert_eq!(m.module(), None);
        let m = find_mapping(&maps, 0x7f0000001010).unwrap();
        assert_eq!(m.module().as_deref(), Some("/tmp/gone"));
        assert_eq!(find_mapping(&maps, 0x7ffd1000010).unwrap().path, "[vdso]");
        assert!(find_mapping(&maps, 0x10).is_none());
        assert!(find_mapping(&maps, 0x55d0c0a08000).is_none());
    }

    #[test]
    fn symbolizes_own_function() {
        let addr = known_function_name as *const () as usize as u64;
        assert_eq!(known_function_name(1), known_function_name(1));
        let mut symbolizer = Symbolizer::new();
        let stack = symbolizer.symbolize(std::process::id(), &[addr]);
        assert_eq!(stack.frames.len(), 1, "{stack:#?}");
        let f = &stack.frames[0];
        assert_eq!(f.addr, addr);
        let symbol = f.symbol.as_deref().unwrap_or_else(|| panic!("{stack:#?}"));
        assert!(
            symbol.ends_with("stacks::tests::known_function_name"),
            "{symbol}"
        );
        assert!(!symbol.contains("::h"), "{symbol}");
        let file = f.file.as_deref().unwrap_or_else(|| panic!("{stack:#?}"));
        assert!(file.ends_with("stacks.rs"), "{file}");
        assert!(f.line.is_some(), "{stack:#?}");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(f.module.as_deref(), exe.to_str(), "{stack:#?}");
        assert!(stack.truncated);
        assert_eq!(app_frames(&stack, 5), [f]);
        assert!(frame_label(f).contains("known_function_name (enrich/stacks.rs:"));

        // The same again comes from the cache; a return address (second
        // position) one past the function's first byte resolves the same.
        let again = symbolizer.symbolize(std::process::id(), &[addr, 0, addr + 1]);
        assert_eq!(again.frames.len(), 2);
        assert_eq!(again.frames[0], *f);
        assert_eq!(again.frames[1].symbol, f.symbol);
        assert_eq!(again.frames[1].addr, addr + 1);
    }

    #[test]
    fn unknown_addresses_and_processes() {
        let mut symbolizer = Symbolizer::new();
        let pid = std::process::id();
        let heap = Box::new(5u64);
        let heap_addr = &*heap as *const u64 as u64;
        let stack = symbolizer.symbolize(pid, &[0x10, heap_addr, u64::MAX]);
        assert_eq!(stack.frames.len(), 3);
        for f in &stack.frames {
            assert_eq!((&f.symbol, &f.file, f.line), (&None, &None, None), "{f:?}");
        }
        assert_eq!(stack.frames[0].module, None);
        assert!(stack.truncated);

        // A pid that does not exist (pid_max is at most 2^22).
        let gone = symbolizer.symbolize(0x7fff_fff0, &[0x401000, 0x401005]);
        assert_eq!(
            gone.frames,
            [0x401000, 0x401005]
                .iter()
                .map(|&addr| FrameInfo::unknown(None).to_frame(addr))
                .collect::<Vec<_>>()
        );
        assert!(gone.truncated);
        let zero = symbolizer.symbolize(0, &[0x401000]);
        assert_eq!(zero.frames.len(), 1);
        assert_eq!(symbolizer.symbolize(pid, &[]).frames, []);
    }

    fn sleep_binary() -> PathBuf {
        let paths = std::env::var_os("PATH").expect("PATH");
        let found = std::env::split_paths(&paths)
            .map(|dir| dir.join("sleep"))
            .find(|p| p.is_file())
            .expect("sleep in PATH");
        std::fs::canonicalize(found).unwrap()
    }

    /// A `sleep` child and an address in the middle of its code.
    fn spawn_sleep(sleep: &std::path::Path) -> (std::process::Child, u64) {
        let child = std::process::Command::new(sleep).arg("10").spawn().unwrap();
        let pid = child.id();
        // Wait until the child has exec()ed.
        for _ in 0..400 {
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == sleep) {
                let addr = read_maps(pid).and_then(|maps| {
                    maps.iter()
                        .find(|m| m.executable && std::path::Path::new(&m.path) == sleep)
                        .map(|m| m.start + (m.end - m.start) / 2)
                });
                if let Some(addr) = addr {
                    return (child, addr);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("no code address in child {pid}");
    }

    /// Serializes the tests that count our descriptors to the sleep binary.
    static SLEEP_FDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Our open descriptors to `target`.
    fn fds_to(target: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|p| p == target)
            .count()
    }

    #[test]
    fn caches_stay_bounded() {
        let _serial = SLEEP_FDS.lock().unwrap_or_else(|e| e.into_inner());
        let addr = known_function_name as *const () as usize as u64;
        let mut symbolizer = Symbolizer::with_limits(8, 2);
        for i in 0..20 {
            let stack = symbolizer.symbolize(std::process::id(), &[addr + i]);
            let symbol = stack.frames[0].symbol.as_deref().unwrap();
            assert!(symbol.ends_with("known_function_name"), "{symbol}");
            assert!(symbolizer.cache.len() <= 8);
        }
        // Other processes, symbolized and gone: evicted, down to the limit.
        let sleep = sleep_binary();
        for _ in 0..5 {
            let (mut child, code) = spawn_sleep(&sleep);
            let stack = symbolizer.symbolize(child.id(), &[code]);
            assert_eq!(
                stack.frames[0].module.as_deref().map(PathBuf::from),
                Some(sleep.clone())
            );
            assert!(symbolizer.pids.len() <= 2, "{:?}", symbolizer.pids.keys());
            child.kill().unwrap();
            child.wait().unwrap();
        }
        assert!(symbolizer.cache.len() <= 8);
        // Evicting the last pids that used the binary releases blazesym's
        // parsed copy of it (and its descriptor). With symbolic paths (no
        // CAP_SYS_ADMIN) the file is cached by its path, once, and stays.
        let pids: Vec<u32> = symbolizer.pids.keys().copied().collect();
        symbolizer.evict_pids(&pids);
        assert!(symbolizer.pids.is_empty() && symbolizer.cache.is_empty());
        assert_eq!(fds_to(&sleep), usize::from(!symbolizer.map_files));
    }

    /// One binary mapped by many processes is opened and parsed once:
    /// blazesym holds one descriptor per distinct file, however many
    /// processes (and /proc/PID/map_files/ paths) lead to it.
    #[test]
    fn binaries_are_cached_across_processes() {
        let _serial = SLEEP_FDS.lock().unwrap_or_else(|e| e.into_inner());
        let sleep = sleep_binary();
        let mut symbolizer = Symbolizer::new();
        let mut children = Vec::new();
        for round in 0..4 {
            let (child, code) = spawn_sleep(&sleep);
            let stack = symbolizer.symbolize(child.id(), &[code]);
            let module = stack.frames[0].module.as_deref().unwrap();
            assert_eq!(std::path::Path::new(module), sleep, "{stack:?}");
            assert_eq!(fds_to(&sleep), 1, "round {round}");
            children.push(child);
        }
        assert_eq!(symbolizer.pids.len(), 4);
        for mut child in children {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
