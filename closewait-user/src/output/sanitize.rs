//! The one sanitizer for text that comes from other processes (names,
//! command lines, cgroup paths, symbols, file paths): applied once, where a
//! text output prints it. JSON needs none of this: serde_json escapes control
//! characters, and the values stay what the kernel reported.

use std::{borrow::Cow, fmt::Write as _};

/// Make `s` safe and unambiguous on a terminal: a backslash is doubled,
/// control characters become `\xNN` (below U+0100) or `\u{N}`, and so do the
/// invisible characters that reorder or split what a terminal shows
/// (bidirectional overrides, isolates and marks; line and paragraph
/// separators).
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(text("api-server"), Cow::Borrowed("api-server")));
        assert_eq!(text("naïve 日本"), "naïve 日本");
    }

    #[test]
    fn controls_and_backslashes() {
        assert_eq!(text("evil\x1b[31mred"), "evil\\x1b[31mred");
        assert_eq!(text("a\\b\n\t"), "a\\\\b\\x0a\\x09");
        assert_eq!(text("bell\u{7}\u{9b}"), "bell\\x07\\x9b");
        // Escaping is unambiguous: an escaped text never looks like another.
        assert_ne!(text("\\x1b"), text("\x1b"));
    }

    #[test]
    fn bidirectional_overrides_and_separators() {
        assert_eq!(text("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(text("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(text("\u{200f}\u{061c}"), "\\u{200f}\\u{61c}");
        assert_eq!(text("l1\u{2028}l2"), "l1\\u{2028}l2");
    }

    #[test]
    fn applied_once_it_is_not_applied_twice() {
        // Defect 3: a symbol was escaped by the symbolizer and again by the
        // printer (`\\u{1b}`). One pass gives one backslash.
        assert_eq!(text("sym\x1b"), "sym\\x1b");
    }
}
