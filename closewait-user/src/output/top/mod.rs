//! `closewait-trace top`: a full-screen view of the stuck groups that
//! refreshes, sorts, filters and drills into one group, drawn with ratatui
//! on crossterm. It reads the read model only ([`Output::tick`]); the
//! kernel side and the lookups are the stream's.
//!
//! While the view is up, stderr is held in a pipe (the latest line is shown
//! in the footer) so that diagnostics never draw over the screen; on exit
//! the terminal is restored and the held lines are written to stderr. The
//! terminal is restored on `q`, Ctrl-C, SIGTERM (the agent ends the run),
//! an error (drop) and a panic (the hook).

pub mod draw;
pub mod state;

use std::{
    collections::VecDeque,
    io::{self, BufRead, BufReader, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen},
    },
    Terminal,
};

use self::state::{Key, Outcome, Snapshot, View};
use super::{Output, StartInfo};
use crate::{model::Model, output::sanitize};

/// Width of `--once`'s table.
const ONCE_WIDTH: u16 = 160;
/// Diagnostics kept while the view is up.
const HELD_LINES: usize = 1000;

/// The original stderr while the view holds it (-1: not held), for the
/// panic hook.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
/// The terminal is in raw mode on the alternate screen.
static SCREEN_UP: AtomicBool = AtomicBool::new(false);
/// A thread other than the view's panicked: the view ends (and restores
/// the terminal) at its next tick.
static OTHER_PANICKED: AtomicBool = AtomicBool::new(false);

/// `top`'s settings.
#[derive(Clone, Copy, Debug)]
pub struct TopOptions {
    pub delay: Duration,
    pub threshold: Duration,
    /// Print the table once after `delay` and exit (stdout need not be a
    /// terminal).
    pub once: bool,
}

/// The live view, or `--once`'s table.
pub fn new(opts: TopOptions) -> Box<dyn Output> {
    let view = View::new("-", opts.threshold.as_nanos() as u64);
    if opts.once {
        Box::new(Once {
            view,
            delay_ns: opts.delay.as_nanos() as u64,
            started_ns: None,
        })
    } else {
        Box::new(Top {
            view,
            delay_ns: opts.delay.as_nanos() as u64,
            terminal: None,
            next_refresh_ns: 0,
            last: None,
            held: None,
            page: 10,
        })
    }
}

/// Whether stdout is a terminal (`top` without `--once` needs one).
pub fn stdout_is_terminal() -> bool {
    // SAFETY: isatty on a descriptor number.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

struct Top {
    view: View,
    delay_ns: u64,
    terminal: Option<Terminal<CrosstermBackend<io::Stdout>>>,
    next_refresh_ns: u64,
    last: Option<Snapshot>,
    held: Option<HeldStderr>,
    /// Rows a page key moves (the body's height at the last draw).
    page: usize,
}

impl Top {
    fn enter(&mut self) -> io::Result<()> {
        install_panic_hook();
        if stderr_is_terminal() {
            self.held = HeldStderr::start().ok();
        }
        terminal::enable_raw_mode()?;
        SCREEN_UP.store(true, Ordering::SeqCst);
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        self.terminal = Some(Terminal::new(CrosstermBackend::new(io::stdout()))?);
        Ok(())
    }

    /// Leave the alternate screen and give stderr back (idempotent; also
    /// after an `enter` that failed half-way).
    fn restore(&mut self) {
        self.terminal = None;
        restore_terminal();
        if let Some(held) = self.held.take() {
            held.release();
        }
    }

    fn draw(&mut self, s: &Snapshot) -> io::Result<()> {
        let Some(terminal) = self.terminal.as_mut() else {
            return Ok(());
        };
        let frame = terminal.draw(|f| draw::draw(f, s, true))?;
        self.page = usize::from(draw::body_height(frame.area.height)).max(1);
        Ok(())
    }

    /// Keys and resizes waiting; whether to quit, and whether to redraw.
    fn input(&mut self) -> io::Result<(bool, bool)> {
        let mut redraw = false;
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    let Some(key) = key_of(k) else { continue };
                    match self.view.on_key(key, self.page) {
                        Outcome::Quit => return Ok((true, redraw)),
                        Outcome::Changed => redraw = true,
                        Outcome::Unchanged => {}
                    }
                }
                Event::Resize(..) => {
                    if let Some(t) = self.terminal.as_mut() {
                        t.autoresize()?;
                    }
                    self.last = None;
                    redraw = true;
                }
                _ => {}
            }
        }
        Ok((false, redraw))
    }
}

impl Output for Top {
    fn start(&mut self, info: &StartInfo, _now_ns: u64) -> io::Result<()> {
        self.view.set_attach(info.attach);
        self.enter()
    }

    fn summary(&mut self, _model: &Model, _ran: Duration, _now_ns: u64) -> io::Result<()> {
        self.restore();
        Ok(())
    }

    fn tick(&mut self, model: &Model, now_ns: u64) -> io::Result<bool> {
        if self.terminal.is_none() {
            return Ok(false);
        }
        if OTHER_PANICKED.load(Ordering::SeqCst) {
            return Err(io::Error::other(
                "a thread of the agent panicked (said above)",
            ));
        }
        let (quit, keyed) = self.input()?;
        if quit {
            return Ok(true);
        }
        if !keyed && now_ns < self.next_refresh_ns {
            return Ok(false);
        }
        if now_ns >= self.next_refresh_ns {
            self.next_refresh_ns = now_ns.saturating_add(self.delay_ns);
        }
        let message = self.held.as_ref().and_then(HeldStderr::latest);
        let snapshot = self.view.snapshot(model, now_ns, message);
        if keyed || self.last.as_ref() != Some(&snapshot) {
            self.draw(&snapshot)?;
            self.last = Some(snapshot);
        }
        Ok(false)
    }

    fn is_live(&self) -> bool {
        true
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        self.restore();
    }
}

/// `top --once`: the table once, as text, after the first interval.
struct Once {
    view: View,
    delay_ns: u64,
    started_ns: Option<u64>,
}

impl Output for Once {
    fn start(&mut self, info: &StartInfo, now_ns: u64) -> io::Result<()> {
        self.view.set_attach(info.attach);
        self.started_ns = Some(now_ns);
        Ok(())
    }

    fn summary(&mut self, _model: &Model, _ran: Duration, _now_ns: u64) -> io::Result<()> {
        Ok(())
    }

    fn tick(&mut self, model: &Model, now_ns: u64) -> io::Result<bool> {
        let Some(started) = self.started_ns else {
            return Ok(false);
        };
        if now_ns < started.saturating_add(self.delay_ns) {
            return Ok(false);
        }
        let snapshot = self.view.snapshot(model, now_ns, None);
        let mut out = io::stdout().lock();
        out.write_all(draw::to_text(&snapshot, ONCE_WIDTH).as_bytes())?;
        out.flush()?;
        Ok(true)
    }

    fn is_live(&self) -> bool {
        true
    }
}

fn key_of(k: KeyEvent) -> Option<Key> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    Some(match k.code {
        KeyCode::Char('c') if ctrl => Key::Interrupt,
        KeyCode::Char(_) if ctrl => return None,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

fn stderr_is_terminal() -> bool {
    // SAFETY: isatty on a descriptor number.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// Leave raw mode and the alternate screen, show the cursor. Writes the
/// escape sequences straight to fd 1 (no lock: the panic hook may run on
/// any thread).
fn restore_terminal() {
    if !SCREEN_UP.swap(false, Ordering::SeqCst) {
        return;
    }
    let _ = terminal::disable_raw_mode();
    let seq = b"\x1b[?25h\x1b[?1049l";
    // SAFETY: writing a static buffer to a descriptor number.
    let _ = unsafe { libc::write(libc::STDOUT_FILENO, seq.as_ptr().cast(), seq.len()) };
}

/// Give fd 2 back to the original stderr, if held.
fn release_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is the duplicate of the original stderr we own.
        unsafe {
            libc::dup2(saved, libc::STDERR_FILENO);
            libc::close(saved);
        }
    }
}

/// On a panic of the view's own thread (the one that entered): restore
/// the terminal and stderr, then the usual message. On another thread's:
/// stderr back so the message is seen, and the view ends at its next tick
/// (restoring the terminal as it goes).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let view_thread = std::thread::current().id();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == view_thread {
                restore_terminal();
            } else {
                OTHER_PANICKED.store(true, Ordering::SeqCst);
            }
            release_stderr();
            previous(info);
        }));
    });
}

/// stderr redirected into a pipe while the view is up; a thread keeps the
/// lines.
struct HeldStderr {
    lines: Arc<Mutex<VecDeque<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl HeldStderr {
    fn start() -> io::Result<HeldStderr> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors we own.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: duplicating our own stderr.
        let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
        if saved < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd 2 now refers to the pipe; the write end is closed
        // below, so the pipe ends when fd 2 is given back.
        if unsafe { libc::dup2(write_end.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
            let err = io::Error::last_os_error();
            // SAFETY: our duplicate.
            unsafe { libc::close(saved) };
            return Err(err);
        }
        drop(write_end);
        SAVED_STDERR.store(saved, Ordering::SeqCst);
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let sink = lines.clone();
        let reader = std::thread::Builder::new()
            .name("stderr".into())
            .spawn(move || {
                let reader = BufReader::new(std::fs::File::from(read_end));
                for line in reader.split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let Ok(mut held) = sink.lock() else { return };
                    if held.len() == HELD_LINES {
                        held.pop_front();
                    }
                    held.push_back(line);
                }
            })?;
        Ok(HeldStderr { lines, reader })
    }

    fn latest(&self) -> Option<String> {
        let held = self.lines.lock().ok()?;
        held.back().map(|l| sanitize::text(l).into_owned())
    }

    /// Give stderr back and write what was held to it.
    fn release(self) {
        release_stderr();
        // The pipe's last write end is gone: the reader sees its end.
        let _ = self.reader.join();
        let Ok(held) = self.lines.lock() else { return };
        let mut err = io::stderr().lock();
        for line in held.iter() {
            let _ = writeln!(err, "{line}");
        }
    }
}
