//! The progress line of `resound send`: drawn on stderr, only when stderr is a terminal, fitted
//! to the terminal's width, with the rate and the time left.
//!
//! ```text
//! [##########----------]  48%  491.5 MiB / 1.0 GiB  652.1 MiB/s  ETA 0:01
//! 1.2 GiB  652.1 MiB/s                                  (standard input: no size, no ETA)
//! ```
//!
//! Why stderr: stdout carries the result line, which scripts read (`send big > log` must still
//! show progress in the terminal and leave only the result in the log). Why fitted: a line
//! longer than the terminal wraps, and `\r` then returns to the start of the *last* row, so
//! every redraw adds a row. [`render`] is pure (numbers and a width in, a line out) and
//! unit-tested; [`Progress`] only measures time, asks the width and writes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::human;

/// Redraw at most this often: enough to look live, few enough writes to cost nothing.
const REDRAW: Duration = Duration::from_millis(100);

/// The rate is measured over about this much recent time, so the ETA follows a transfer that
/// speeds up or slows down instead of averaging over its whole history.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// The narrowest bar worth drawing; below it the bar is left out.
const MIN_BAR: usize = 10;

/// A progress line on stderr. Call [`Progress::update`] as bytes go out; it redraws at most every
/// [`REDRAW`]. Dropped without [`Progress::finish`] (an error), it erases itself so the error
/// message starts on a clean line.
pub struct Progress {
    total: Option<u64>,
    last_draw: Option<Instant>,
    /// (when, bytes done) at recent redraws, oldest first, spanning about [`RATE_WINDOW`].
    samples: VecDeque<(Instant, u64)>,
    drawn: bool,
}

impl Progress {
    /// `total` is None for a stream of unknown length (standard input).
    pub fn new(total: Option<u64>) -> Progress {
        let mut samples = VecDeque::new();
        samples.push_back((Instant::now(), 0));
        Progress {
            total,
            last_draw: None,
            samples,
            drawn: false,
        }
    }

    pub fn update(&mut self, done: u64) {
        let now = Instant::now();
        if self.last_draw.is_some_and(|t| now < t + REDRAW) {
            return;
        }
        self.last_draw = Some(now);
        self.samples.push_back((now, done));
        while self.samples.len() > 2 && now - self.samples[1].0 >= RATE_WINDOW {
            self.samples.pop_front();
        }
        self.draw(done, self.rate());
    }

    /// The last state, kept on screen, and the line ended.
    pub fn finish(mut self, done: u64) {
        let (t0, _) = self.samples[0];
        // The final rate is the whole transfer's average, as in the result line.
        let whole = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        self.samples.clear();
        self.draw(done, whole);
        eprintln!();
        self.drawn = false;
    }

    /// Bytes per second over the recent samples.
    fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, b0)), Some(&(t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn draw(&mut self, done: u64, rate: f64) {
        let line = render(done, self.total, rate, terminal_width());
        // One write per redraw: `\r` back to column 0, the line, then erase what a longer
        // previous line left behind.
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.drawn = true;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.drawn {
            let _ = write!(io::stderr(), "\r\x1b[K");
        }
    }
}

/// The width of the terminal on stderr, or 80 if it cannot be asked.
fn terminal_width() -> usize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, on a descriptor we hold.
    let rc = unsafe { libc::ioctl(io::stderr().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

/// The progress line for `done` of `total` bytes at `rate` bytes/s, at most `width - 1`
/// characters (a line that fills the last column makes some terminals wrap).
///
/// What does not fit is left out, least useful first: the bar, then `done / total`, then the
/// ETA; the percentage and the rate stay.
pub fn render(done: u64, total: Option<u64>, rate: f64, width: usize) -> String {
    let room = width.saturating_sub(1);
    let rate_s = format!("{}/s", human(rate));
    let Some(total) = total else {
        return fit(&[&human(done as f64), &rate_s], room);
    };
    let rate_s = rate_s.as_str();
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let pct = format!("{:3.0}%", frac * 100.0);
    let amount = format!("{} / {}", human(done as f64), human(total as f64));
    let eta = format!("ETA {}", eta(total.saturating_sub(done), rate));
    let (pct, amount, eta) = (pct.as_str(), amount.as_str(), eta.as_str());

    for fields in [
        &[pct, amount, rate_s, eta][..],
        &[pct, rate_s, eta],
        &[pct, rate_s],
    ] {
        let text = fields.join("  ");
        // "[" + bar + "] " + text
        if let Some(bar) = room.checked_sub(text.chars().count() + 3)
            && bar >= MIN_BAR
        {
            let filled = ((frac * bar as f64) as usize).min(bar);
            return format!(
                "[{}{}] {text}",
                "#".repeat(filled),
                "-".repeat(bar - filled)
            );
        }
        if text.chars().count() <= room {
            return text;
        }
    }
    fit(&[pct, rate_s], room)
}

/// The fields joined by two spaces, cut to `room` characters.
fn fit(fields: &[&str], room: usize) -> String {
    fields.join("  ").chars().take(room).collect()
}

/// Time left at `rate` bytes/s: `0:42`, `12:05`, `1:02:03`; `--:--` when nothing is moving.
fn eta(left: u64, rate: f64) -> String {
    if rate < 1.0 {
        return "--:--".into();
    }
    let secs = (left as f64 / rate).ceil();
    if secs > 99.0 * 3600.0 {
        return "--:--".into();
    }
    let secs = secs as u64;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn test_wide_terminal_gets_everything() {
        let line = render(512 * MIB, Some(1024 * MIB), 256.0 * MIB as f64, 100);
        assert!(line.starts_with('['), "{line}");
        assert!(
            line.ends_with(" 50%  512.0 MiB / 1.0 GiB  256.0 MiB/s  ETA 0:02"),
            "{line}"
        );
        assert_eq!(line.chars().count(), 99);
        // Half the bar is filled.
        let bar = &line[1..line.find(']').unwrap()];
        assert_eq!(bar.matches('#').count(), bar.len() / 2);
    }

    #[test]
    fn test_never_wider_than_the_terminal() {
        for width in 0..200 {
            for (done, total) in [(0, Some(0)), (1, Some(3)), (u64::MAX / 2, Some(u64::MAX))] {
                let line = render(done, total, 1e9, width);
                assert!(
                    line.chars().count() < width.max(1),
                    "width {width}: {line:?}"
                );
            }
            let line = render(123_456_789, None, 1e6, width);
            assert!(
                line.chars().count() < width.max(1),
                "width {width}: {line:?}"
            );
        }
    }

    #[test]
    fn test_narrow_terminals_drop_the_least_useful_first() {
        let line = render(512 * MIB, Some(1024 * MIB), 256.0 * MIB as f64, 40);
        assert_eq!(line, " 50%  256.0 MiB/s  ETA 0:02");
        let line = render(512 * MIB, Some(1024 * MIB), 256.0 * MIB as f64, 20);
        assert_eq!(line, " 50%  256.0 MiB/s");
    }

    #[test]
    fn test_stream_of_unknown_size_has_no_bar_and_no_eta() {
        assert_eq!(render(3 * MIB / 2, None, 1024.0, 80), "1.5 MiB  1.0 KiB/s");
    }

    #[test]
    fn test_eta() {
        assert_eq!(eta(100, 0.0), "--:--");
        assert_eq!(eta(0, 10.0), "0:00");
        assert_eq!(eta(42, 1.0), "0:42");
        assert_eq!(eta(3723, 1.0), "1:02:03");
        assert_eq!(eta(u64::MAX, 1.0), "--:--");
    }
}
