//! A real terminal for the live view: a tmux server of the test's own
//! (its own socket), one pane running a plain shell, read with
//! `capture-pane` and driven with `send-keys`.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached session `width` x `height` running `bash --norc`.
    pub fn start(tag: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("cwt-{tag}-{}", std::process::id()),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='$ ' TERM=xterm-256color bash --norc --noprofile",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (Debian package tmux; `cargo xtask setup` installs it)")
    }

    /// Type `text` and press Enter.
    pub fn type_line(&self, text: &str) {
        assert!(self
            .run(&["send-keys", "-t", "0", "-l", text])
            .status
            .success());
        self.keys("Enter");
    }

    /// Press keys by tmux name (`q`, `Enter`, `Escape`, `C-c`).
    pub fn keys(&self, keys: &str) {
        assert!(self.run(&["send-keys", "-t", "0", keys]).status.success());
    }

    /// What the pane shows now.
    pub fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "0"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the pane is on the alternate screen.
    pub fn alternate_on(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "0", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// The pid of the pane's shell.
    pub fn shell_pid(&self) -> u32 {
        let out = self.run(&["display-message", "-p", "-t", "0", "#{pane_pid}"]);
        let pid = String::from_utf8_lossy(&out.stdout);
        pid.trim().parse().expect("pane_pid")
    }

    /// Poll the screen until `pred` holds; panics with the screen after
    /// `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
