//! Lays a [`Snapshot`] out on a ratatui frame: a two-line header, the
//! table of groups (or one group's detail), and a footer with the keys and
//! the latest diagnostic. Draws only what the snapshot says, so equal
//! snapshots draw the same screen.

use ratatui::{
    backend::TestBackend,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Row as TableRow, Table, TableState},
    Frame, Terminal,
};

use super::state::{coarse_dwell, Detail, Snapshot};
use crate::output::format::count_of;

const HEADER_LINES: u16 = 2;
const FOOTER_LINES: u16 = 2;
/// Lines `--once` prints at most.
const MAX_TEXT_LINES: usize = 10_000;

/// Rows of the body (the table's or the detail's) a screen of `height` has.
pub fn body_height(height: u16) -> u16 {
    height.saturating_sub(HEADER_LINES + FOOTER_LINES + 1)
}

/// Draw the whole screen. `interactive`: with the selection and the keys
/// (not for `--once`).
pub fn draw(frame: &mut Frame, s: &Snapshot, interactive: bool) {
    let footer = if interactive { FOOTER_LINES } else { 0 };
    let [header, body, foot] = Layout::vertical([
        Constraint::Length(HEADER_LINES),
        Constraint::Min(1),
        Constraint::Length(footer),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(s)), header);
    match &s.detail {
        Some(d) => {
            let lines = detail_lines(d);
            let scroll = u16::try_from(s.scroll).unwrap_or(u16::MAX);
            frame.render_widget(Paragraph::new(lines).scroll((scroll, 0)), body);
        }
        None => draw_table(frame, s, body, interactive),
    }
    if interactive {
        frame.render_widget(Paragraph::new(footer_lines(s)), foot);
    }
}

fn header_lines(s: &Snapshot) -> Vec<Line<'static>> {
    let h = &s.header;
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.1}/s"));
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let groups = if s.filter.is_empty() {
        count_of(s.total_groups, "group", "groups")
    } else {
        format!(
            "{} of {} groups match \"{}\"",
            s.rows.len(),
            s.total_groups,
            s.filter
        )
    };
    vec![
        Line::from(vec![
            Span::styled("closewait-trace top", bold),
            Span::raw(format!(
                "   attach {}   stacks {}   threshold {}   sort {}",
                h.attach,
                h.stacks,
                h.threshold,
                s.sort.name()
            )),
        ]),
        Line::from(vec![
            Span::styled(format!("{} in CLOSE_WAIT", h.in_close_wait), bold),
            Span::raw("   "),
            Span::styled(format!("{} stuck", h.stuck_now), bold),
            Span::raw(format!(
                "   entered {}   closed {}   events lost {}   {groups}",
                rate(h.entered_per_s),
                rate(h.closed_per_s),
                h.lost
            )),
        ]),
    ]
}

fn draw_table(frame: &mut Frame, s: &Snapshot, area: Rect, interactive: bool) {
    if s.rows.is_empty() {
        let text = if s.total_groups == 0 {
            format!("No socket stuck in CLOSE_WAIT past {}.", s.header.threshold)
        } else {
            "No group matches the filter.".to_string()
        };
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let header = TableRow::new([
        "COUNT",
        "+/MIN",
        "OLDEST",
        "OWNER",
        "ENDPOINT",
        "CREATED AT",
        "CAUSE",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rows = s.rows.iter().map(|r| {
        TableRow::new([
            r.count.to_string(),
            format!("+{}", r.growth_per_min),
            coarse_dwell(r.oldest_dwell_ns),
            r.owner.clone(),
            r.endpoint.clone(),
            r.site.clone(),
            r.cause.clone(),
        ])
    });
    let widths = [
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Max(24),
        Constraint::Max(28),
        Constraint::Fill(1),
        Constraint::Length(20),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(interactive.then_some(s.selected));
    frame.render_stateful_widget(table, area, &mut state);
}

/// The detail pane's lines, in order (the view scrolls through them).
pub fn detail_lines(d: &Detail) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut lines = vec![Line::styled(d.title.clone(), bold), Line::raw("")];
    if let Some(why) = &d.why {
        lines.push(Line::from(vec![
            Span::styled("Why: ", bold),
            Span::raw(why.clone()),
        ]));
    }
    if let Some(hint) = &d.hint {
        lines.push(Line::from(vec![
            Span::styled("Hint: ", bold),
            Span::raw(hint.clone()),
        ]));
    }
    lines.extend(d.findings.iter().map(|f| Line::raw(format!("  - {f}"))));
    lines.push(Line::raw(""));
    if d.stack.is_empty() {
        lines.push(Line::styled(
            "Creation stack: not recorded (created before capture was armed, or beyond its budget)",
            bold,
        ));
    } else {
        let cut = if d.stack_truncated {
            " (cut short)"
        } else {
            ""
        };
        lines.push(Line::styled(format!("Creation stack{cut}:"), bold));
        lines.extend(d.stack.iter().map(|f| Line::raw(format!("  {f}"))));
    }
    if !d.last_read.is_empty() {
        lines.push(Line::styled("Read that returned EOF (last_read):", bold));
        lines.extend(d.last_read.iter().map(|f| Line::raw(format!("  {f}"))));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!("Sockets ({}):", d.sockets.len() + d.more_sockets),
        bold,
    ));
    lines.push(Line::styled(
        format!(
            "  {:<48} {:>8} {:>5} {:>7}",
            "ENDPOINT", "DWELL", "FD", "RQUEUE"
        ),
        Style::new().add_modifier(Modifier::UNDERLINED),
    ));
    let opt = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    lines.extend(d.sockets.iter().map(|s| {
        Line::raw(format!(
            "  {:<48} {:>8} {:>5} {:>7}",
            s.endpoint,
            s.dwell,
            opt(s.fd),
            opt(s.rqueue)
        ))
    }));
    if d.more_sockets > 0 {
        lines.push(Line::raw(format!("  ... and {} more", d.more_sockets)));
    }
    lines
}

fn footer_lines(s: &Snapshot) -> Vec<Line<'static>> {
    let keys = if s.editing {
        format!("filter: {}_   (Enter keeps it, Esc clears it)", s.filter)
    } else if s.detail.is_some() {
        "Up/Down j/k scroll   Esc back   q quit".to_string()
    } else {
        "Up/Down j/k move   Enter details   s sort   / filter   q quit".to_string()
    };
    let dim = Style::new().add_modifier(Modifier::DIM);
    vec![
        Line::styled(keys, Style::new().add_modifier(Modifier::REVERSED)),
        Line::styled(s.message.clone().unwrap_or_default(), dim),
    ]
}

/// The screen as plain text, `width` columns wide and as tall as it needs
/// (`top --once`).
pub fn to_text(s: &Snapshot, width: u16) -> String {
    let body = match &s.detail {
        Some(d) => detail_lines(d).len(),
        None => s.rows.len().max(1) + 1,
    };
    // Groups are capped well below this; a screen of text, not a buffer of
    // gigabytes, whatever the input.
    let body = u16::try_from(body.min(MAX_TEXT_LINES)).unwrap_or(u16::MAX);
    let height = HEADER_LINES.saturating_add(body);
    // The test backend draws into memory: it cannot fail.
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height));
    let Ok(_) = terminal.draw(|f| draw(f, s, false));
    buffer_text(terminal.backend().buffer())
}

/// The cells of `buffer`, line by line, without trailing blanks.
pub fn buffer_text(buffer: &ratatui::buffer::Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right())
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        model::{
            tests::{diagnosed, stuck, S},
            Model,
        },
        output::top::state::{Key, View},
    };

    fn screen(view: &mut View, m: &Model, w: u16, h: u16) -> (String, ratatui::buffer::Buffer) {
        let s = view.snapshot(m, 130 * S, Some("closewait-trace: a diagnostic".into()));
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, &s, true)).unwrap();
        let buffer = t.backend().buffer().clone();
        (buffer_text(&buffer), buffer)
    }

    fn model() -> Model {
        let mut m = Model::default();
        let api = Arc::new(diagnosed("api-server", 1));
        for id in 1..=3 {
            m.apply(&mut stuck(id, 5432, Some(api.clone())));
        }
        m.apply(&mut stuck(4, 6000, Some(Arc::new(diagnosed("worker", 0)))));
        m.set_counts(crate::tracking::Counts {
            in_close_wait: 6,
            ..Default::default()
        });
        m
    }

    #[test]
    fn the_table_shows_a_row_per_group_with_the_selection_highlighted() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        let (text, buffer) = screen(&mut v, &m, 140, 12);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("closewait-trace top   attach tp_btf   stacks off"),
            "{text}"
        );
        assert!(lines[1].starts_with("6 in CLOSE_WAIT"), "{text}");
        assert!(lines[1].contains("4 stuck"), "{text}");
        assert!(
            lines[2].contains("COUNT") && lines[2].contains("CREATED AT"),
            "{text}"
        );
        let row = lines[3];
        for cell in [
            "3",
            "+3",
            "30s",
            "4242 (api-server)",
            "10.0.0.2:5432",
            "pool::checkout (src/pool.rs:88)",
            "idle_closed_by_peer",
        ] {
            assert!(row.contains(cell), "{cell:?} in {row:?}");
        }
        assert!(lines[4].contains("4242 (worker)"), "{text}");
        let reversed = |y: u16| buffer[(1, y)].modifier.contains(Modifier::REVERSED);
        assert!(reversed(3) && !reversed(4), "the first row is selected");
        assert!(lines[10].contains("Enter details"), "{text}");
        assert_eq!(lines[11], "closewait-trace: a diagnostic");
        v.on_key(Key::Down, 5);
        let (_, buffer) = screen(&mut v, &m, 140, 12);
        assert!(buffer[(1, 4)].modifier.contains(Modifier::REVERSED));
    }

    #[test]
    fn the_detail_shows_sockets_stack_and_hint() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        screen(&mut v, &m, 100, 30);
        v.on_key(Key::Enter, 5);
        let (text, _) = screen(&mut v, &m, 100, 30);
        assert!(
            text.contains("3 stuck sockets, pid 4242 (api-server)"),
            "{text}"
        );
        assert!(text.contains("Why: "), "{text}");
        assert!(text.contains("Hint: "), "{text}");
        assert!(
            text.contains(
                "Creation stack:\n  pool::checkout (src/pool.rs:88)\n  main (src/pool.rs:20)"
            ),
            "{text}"
        );
        assert!(text.contains("Sockets (3):"), "{text}");
        assert!(text.contains("10.0.0.1:8080 -> 10.0.0.2:5432"), "{text}");
        assert!(text.contains("Esc back"), "{text}");
    }

    #[test]
    fn an_empty_table_says_nothing_is_stuck() {
        let mut v = View::new("tp_btf", 5 * S);
        let (text, _) = screen(&mut v, &Model::default(), 80, 8);
        assert!(
            text.contains("No socket stuck in CLOSE_WAIT past 5.00s."),
            "{text}"
        );
    }

    #[test]
    fn once_prints_the_table_as_text() {
        let m = model();
        let mut v = View::new("tp_btf", 5 * S);
        let s = v.snapshot(&m, 130 * S, None);
        let text = to_text(&s, 120);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[3].contains("4242 (api-server)"), "{text}");
        assert!(!text.contains("q quit"), "no keys: {text}");
    }
}
