//! Giving memory back after a connection flood.
//!
//! Every connection holds buffers (hyper's read and write buffers, its task)
//! that go back to the allocator when it closes. glibc's allocator keeps
//! freed memory in its arenas for reuse rather than returning it to the
//! system, so after a flood of thousands of connections the process's
//! resident memory stays near its peak: twice its idle figure and more
//! after 2,700 connections. Once a flood has ebbed (open connections down
//! to a quarter of a peak of at least [`FLOOD`], at two looks a second
//! apart), the server asks glibc to
//! release what it holds free (`malloc_trim`), and logs the resident
//! memory before and after, so the effect is measured every time it runs.

/// The fewest open connections at a peak that count as a flood.
pub(crate) const FLOOD: usize = 256;

/// Tracks the peak of open connections and says when to trim.
#[derive(Debug, Default)]
pub(crate) struct Ebb {
    peak: usize,
    /// The last look already found the flood down to a quarter.
    low: bool,
}

impl Ebb {
    /// The peak seen since the last ebb.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Notes `open` connections at an accept, so that a flood shorter than
    /// the time between looks still sets the peak.
    pub(crate) fn see(&mut self, open: usize) {
        self.peak = self.peak.max(open);
    }

    /// Looks at `open` connections now (once a second); `true` once when a
    /// flood (a peak of at least [`FLOOD`]) has stayed at a quarter of its
    /// peak or below for two looks in a row: by then the connections that
    /// were closing have ended and their memory is free to return.
    pub(crate) fn ebbed(&mut self, open: usize) -> bool {
        self.see(open);
        let down = self.peak >= FLOOD && open <= self.peak / 4;
        let settled = down && self.low;
        self.low = down;
        if settled {
            self.peak = open;
            self.low = false;
        }
        settled
    }
}

/// Returns freed memory to the system where the allocator keeps it (glibc),
/// logging resident memory before and after. Takes a few milliseconds.
pub(crate) fn give_back(peak: usize) {
    let before = rss_kib();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks
    // and returns whole free pages to the kernel; it touches no memory the
    // program holds and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::info!(
        peak_connections = peak,
        rss_before_kib = before,
        rss_after_kib = rss_kib(),
        "connection flood over: freed memory returned to the system"
    );
}

/// This process's resident memory in KiB (0 where it cannot be read).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_ebbs_once_it_stays_at_a_quarter_of_its_peak() {
        let mut ebb = Ebb::default();
        assert!(!ebb.ebbed(10), "no flood yet");
        assert!(!ebb.ebbed(1000));
        assert!(!ebb.ebbed(251), "above a quarter");
        assert!(!ebb.ebbed(250), "down, once");
        assert!(ebb.ebbed(100), "down twice in a row");
        assert!(!ebb.ebbed(90), "once per flood");
        assert!(!ebb.ebbed(80));
        assert!(!ebb.ebbed(2000), "a second flood");
        assert!(!ebb.ebbed(100));
        assert!(!ebb.ebbed(600), "up again: not settled");
        assert!(!ebb.ebbed(0));
        assert!(ebb.ebbed(0), "a second flood ebbs too");
        // A flood between two looks, seen only at accepts.
        ebb.see(3000);
        assert!(!ebb.ebbed(0));
        assert!(ebb.ebbed(0));
        assert_eq!(ebb.peak(), 0);
    }
}
