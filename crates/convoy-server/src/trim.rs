//! Giving memory back after a connection flood.
//!
//! Every connection holds buffers (hyper's read and write buffers, its task)
//! that go back to the allocator when it closes. glibc's allocator keeps
//! freed memory in its arenas for reuse rather than returning it to the
//! system, so after a flood of thousands of connections the process's
//! resident memory stays near its peak: twice its idle figure and more
//! after 2,700 connections. Once a flood has ebbed (open connections down
//! to a quarter of a peak of at least [`FLOOD`]), the server asks glibc to
//! release what it holds free (`malloc_trim`), and logs the resident
//! memory before and after, so the effect is measured every time it runs.

/// The fewest open connections at a peak that count as a flood.
pub(crate) const FLOOD: usize = 256;

/// Tracks the peak of open connections and says when to trim.
#[derive(Debug, Default)]
pub(crate) struct Ebb {
    peak: usize,
}

impl Ebb {
    /// The peak seen since the last ebb.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Sees `open` connections now; `true` once when a flood (a peak of at
    /// least [`FLOOD`]) has ebbed to a quarter of its peak.
    pub(crate) fn ebbed(&mut self, open: usize) -> bool {
        self.peak = self.peak.max(open);
        if self.peak >= FLOOD && open <= self.peak / 4 {
            self.peak = open;
            true
        } else {
            false
        }
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
    fn a_flood_ebbs_once_at_a_quarter_of_its_peak() {
        let mut ebb = Ebb::default();
        assert!(!ebb.ebbed(10), "no flood yet");
        assert!(!ebb.ebbed(1000));
        assert!(!ebb.ebbed(251), "above a quarter");
        assert!(ebb.ebbed(250));
        assert!(!ebb.ebbed(100), "once per flood");
        assert!(!ebb.ebbed(200), "a small rise is no flood");
        assert!(!ebb.ebbed(50));
        assert!(!ebb.ebbed(2000));
        assert!(ebb.ebbed(0), "a second flood ebbs too");
    }
}
