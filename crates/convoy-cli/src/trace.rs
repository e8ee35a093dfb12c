//! Request traces for replay: the Azure LLM inference trace format and a
//! generic CSV, plus the seeded rule that gives trace rows a priority.
//!
//! # Formats
//!
//! * **Azure 2023** (`data/azure_llm_conv_2023.csv`): header
//!   `TIMESTAMP,ContextTokens,GeneratedTokens`, then rows like
//!   `2023-11-16 18:15:46.6805900,374,44`. The arrival is the timestamp
//!   minus the earliest one; the token cost is `ContextTokens`. Rows carry
//!   no priority: [`PriorityMix`] assigns one.
//! * **Generic**: `arrival_s,priority,tokens[,deadline_ms]`, with or
//!   without that header line. `arrival_s` is seconds from the start (≥ 0),
//!   `priority` a level name (`critical` … `background`) or index, `deadline_ms`
//!   optional (> 0), relative to the arrival and in real time: a replay
//!   does not scale it by its speed-up, since a deadline is what the
//!   caller tolerates, not a trace interval. With a header the columns are
//!   found by name, in any order, and `priority` and `deadline_ms` may be
//!   absent; an empty priority is left to [`PriorityMix`]. An unknown or
//!   repeated column is an error (a misspelt `deadline_ms` must not replay
//!   as "no deadlines").
//!
//! Both are read as CSV (the `csv` crate: a quoted field may hold a comma
//! or a doubled quote; fields are trimmed; CRLF and a byte-order mark are
//! fine). Blank lines and lines starting with `#` are skipped. Any other
//! line that does not parse is an error naming the file and the line
//! number, and so is a file that stops being UTF-8 text.
//! Requests are returned in arrival order (a stable sort).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use convoy::Priority;

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRequest {
    /// Arrival, relative to the trace's first request.
    pub arrival: Duration,
    /// The level, when the trace gives one.
    pub priority: Option<Priority>,
    /// Token cost (the prompt length).
    pub tokens: u32,
    /// Tokens generated (Azure only; informational).
    pub generated: Option<u32>,
    /// Deadline relative to the arrival, when the trace gives one.
    pub deadline: Option<Duration>,
}

/// A loaded trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Where it came from (a path or a name), for reports.
    pub source: String,
    /// In arrival order.
    pub requests: Vec<TraceRequest>,
}

impl Trace {
    /// The arrival of the last request.
    pub fn span(&self) -> Duration {
        self.requests.last().map_or(Duration::ZERO, |r| r.arrival)
    }

    /// The first `limit` requests (all of them for `None`): what a replay
    /// with that `--limit` submits.
    ///
    /// ```
    /// let t = convoy_cli::trace::parse("t", "arrival_s,priority,tokens\n0,high,1\n1,low,2\n").unwrap();
    /// assert_eq!(t.first(Some(1)).len(), 1);
    /// assert_eq!(t.first(Some(9)).len(), 2);
    /// assert_eq!(t.first(None).len(), 2);
    /// ```
    pub fn first(&self, limit: Option<usize>) -> &[TraceRequest] {
        let n = limit.unwrap_or(usize::MAX).min(self.requests.len());
        &self.requests[..n]
    }

    /// Mean arrival rate in requests per second of trace time.
    pub fn rate(&self) -> f64 {
        let span = self.span().as_secs_f64();
        if span > 0.0 {
            self.requests.len() as f64 / span
        } else {
            0.0
        }
    }
}

/// Why a trace could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        reason: String,
    },
    /// A line did not parse.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// No request in the file.
    #[error("{path}: no requests")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Reads and parses a trace file (format detected from its first line).
///
/// ```no_run
/// let trace = convoy_cli::trace::load("data/azure_llm_conv_2023.csv".as_ref())?;
/// assert_eq!(trace.requests.len(), 19_366);
/// # Ok::<(), convoy_cli::trace::TraceError>(())
/// ```
pub fn load(path: &Path) -> Result<Trace, TraceError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| TraceError::Io {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Name the line, as for any other malformed row.
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        TraceError::Malformed {
            path: name.clone(),
            line: 1 + bytes[..valid].iter().filter(|&&b| b == b'\n').count(),
            reason: format!(
                "not UTF-8 text (byte {valid} is not valid UTF-8): is this a CSV file?"
            ),
        }
    })?;
    parse(&name, &text)
}

/// Parses trace text; `name` is used in errors and reports.
///
/// ```
/// use convoy_cli::trace::parse;
/// let t = parse("inline", "arrival_s,priority,tokens,deadline_ms\n0.5,high,12,200\n0,low,3\n").unwrap();
/// assert_eq!(t.requests[0].tokens, 3); // sorted by arrival
/// assert_eq!(t.requests[1].deadline, Some(std::time::Duration::from_millis(200)));
/// let t = parse("inline", "arrival_s,priority,tokens\n0,2,1\n").unwrap(); // or by index
/// assert_eq!(t.requests[0].priority, Some(convoy::Priority::Normal));
/// let t = parse("inline", "tokens,arrival_s\n7,0.25\n").unwrap(); // by name, no priority
/// assert_eq!((t.requests[0].tokens, t.requests[0].priority), (7, None));
/// let e = parse("inline", "arrival_s,priority,tokens\n0,urgent,1\n").unwrap_err();
/// assert_eq!(e.to_string(), "inline:2: unknown priority \"urgent\" (expected critical, high, normal, low, background, or 0 to 4 with 0 the most urgent)");
/// ```
pub fn parse(name: &str, text: &str) -> Result<Trace, TraceError> {
    let malformed = |line: usize, reason: String| TraceError::Malformed {
        path: name.to_owned(),
        line,
        reason,
    };
    // A spreadsheet's export may start with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // The csv crate reads the quoting (a quoted field may hold a comma or
    // a doubled quote); each row's field count is checked below, with its
    // line, so records may be of any length here.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    // Arrivals in ns, absolute (Azure) or from the start (generic).
    let mut rows: Vec<(u64, TraceRequest)> = Vec::new();
    // The format, once the first row has told it.
    let mut format: Option<Format> = None;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                return Err(malformed(line, e.to_string()));
            }
        }
        let no = record.position().map_or(0, |p| p.line() as usize);
        // Blank lines, and comments: a first field that starts with `#`.
        if record.iter().all(str::is_empty) || record.get(0).is_some_and(|f| f.starts_with('#')) {
            continue;
        }
        let f = match &format {
            Some(f) => f,
            None => {
                let (f, header) = detect(&record).map_err(|reason| malformed(no, reason))?;
                let f = format.insert(f);
                if header {
                    continue;
                }
                f
            }
        };
        let fields: Vec<&str> = record.iter().map(unquoted).collect();
        let row = match f {
            Format::Azure => parse_azure(&fields),
            Format::Generic(columns) => parse_generic(columns, &fields),
        };
        rows.push(row.map_err(|reason| malformed(no, reason))?);
    }
    let azure = matches!(format, Some(Format::Azure));
    let Some(start) = rows.iter().map(|(t, _)| *t).min() else {
        return Err(TraceError::Empty {
            path: name.to_owned(),
        });
    };
    let start = if azure { start } else { 0 };
    let mut requests: Vec<TraceRequest> = rows
        .into_iter()
        .map(|(t, r)| TraceRequest {
            arrival: Duration::from_nanos(t - start),
            ..r
        })
        .collect();
    requests.sort_by_key(|r| r.arrival);
    Ok(Trace {
        source: name.to_owned(),
        requests,
    })
}

/// A field with the quotes the csv reader left on it: CSV only reads a
/// quote that opens the field, so `  "12" ` (padded outside its quotes, as
/// some exporters write) comes back as `"12"` after trimming.
fn unquoted(field: &str) -> &str {
    field
        .strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .map_or(field, str::trim)
}

/// A trace's format, as its first row tells it.
enum Format {
    /// `TIMESTAMP,ContextTokens,GeneratedTokens`.
    Azure,
    /// `arrival_s,priority,tokens[,deadline_ms]`, in these columns.
    Generic(Columns),
}

/// The format a trace's first row tells, and whether that row is a header
/// (to skip) rather than the first request.
fn detect(first: &csv::StringRecord) -> Result<(Format, bool), String> {
    let header: Vec<String> = first
        .iter()
        .map(|f| unquoted(f).to_ascii_lowercase())
        .collect();
    let cols: Vec<&str> = header.iter().map(String::as_str).collect();
    let text = || first.iter().collect::<Vec<_>>().join(",");
    if cols.first().is_some_and(|c| c.starts_with("timestamp")) {
        if cols != ["timestamp", "contexttokens", "generatedtokens"] {
            return Err(format!(
                "expected header TIMESTAMP,ContextTokens,GeneratedTokens, got {:?}",
                text()
            ));
        }
        Ok((Format::Azure, true))
    } else if cols.contains(&"arrival_s") {
        Ok((Format::Generic(Columns::from_header(&cols)?), true))
    } else if cols.first().is_none_or(|f| f.parse::<f64>().is_err()) {
        Err(format!(
            "unknown format: expected a header (TIMESTAMP,... or arrival_s,...) or a generic row, got {:?}",
            text()
        ))
    } else {
        Ok((Format::Generic(Columns::POSITIONAL), false))
    }
}

fn count(field: &str, what: &str) -> Result<u32, String> {
    field.parse::<u32>().map_err(|_| {
        format!(
            "{what} must be a whole number from 0 to {}, got {field:?}",
            u32::MAX
        )
    })
}

fn parse_azure(f: &[&str]) -> Result<(u64, TraceRequest), String> {
    if f.len() != 3 {
        return Err(format!(
            "expected 3 fields (TIMESTAMP,ContextTokens,GeneratedTokens), got {}",
            f.len()
        ));
    }
    let at = parse_timestamp(f[0])?;
    Ok((
        at,
        TraceRequest {
            arrival: Duration::ZERO,
            priority: None,
            tokens: count(f[1], "ContextTokens")?,
            generated: Some(count(f[2], "GeneratedTokens")?),
            deadline: None,
        },
    ))
}

/// Where the generic format's columns sit: from its header, in any order,
/// or positionally (`arrival_s,priority,tokens[,deadline_ms]`) in a file
/// without one.
#[derive(Debug, Clone, Copy)]
struct Columns {
    arrival: usize,
    priority: Option<usize>,
    tokens: usize,
    deadline: Option<usize>,
    /// Fields a row may have: every column of the header.
    count: usize,
}

impl Columns {
    const POSITIONAL: Self = Self {
        arrival: 0,
        priority: Some(1),
        tokens: 2,
        deadline: Some(3),
        count: 4,
    };
    const NAMES: &'static str = "arrival_s, tokens, and optionally priority and deadline_ms";

    /// Reads a lower-cased header. An unknown or repeated column is an
    /// error rather than ignored: a misspelt `deadline_ms` would otherwise
    /// replay without deadlines and nobody would notice.
    fn from_header(cols: &[&str]) -> Result<Self, String> {
        let (mut arrival, mut priority, mut tokens, mut deadline) = (None, None, None, None);
        for (i, &name) in cols.iter().enumerate() {
            let slot = match name {
                "arrival_s" => &mut arrival,
                "priority" => &mut priority,
                "tokens" => &mut tokens,
                "deadline_ms" => &mut deadline,
                other => {
                    return Err(format!(
                        "unknown column {other:?} in the header (expected {})",
                        Self::NAMES
                    ))
                }
            };
            if slot.replace(i).is_some() {
                return Err(format!("column {name:?} appears twice in the header"));
            }
        }
        let need = |c: Option<usize>, name: &str| {
            c.ok_or_else(|| format!("the header has no {name} column (expected {})", Self::NAMES))
        };
        Ok(Self {
            arrival: need(arrival, "arrival_s")?,
            tokens: need(tokens, "tokens")?,
            priority,
            deadline,
            count: cols.len(),
        })
    }

    /// Fields a row needs at least: up to its last required column (the
    /// optional ones after it may be left off).
    fn required(&self) -> usize {
        self.arrival.max(self.tokens) + 1
    }
}

fn parse_generic(c: &Columns, f: &[&str]) -> Result<(u64, TraceRequest), String> {
    if !(c.required()..=c.count).contains(&f.len()) {
        let want = if c.required() == c.count {
            c.count.to_string()
        } else {
            format!("{} to {}", c.required(), c.count)
        };
        return Err(format!("expected {want} fields, got {}", f.len()));
    }
    // A column the row stops short of reads as empty.
    let cell = |i: Option<usize>| i.and_then(|i| f.get(i)).copied().unwrap_or("");
    let arrival: f64 = f[c.arrival]
        .parse()
        .map_err(|_| format!("arrival_s must be a number, got {:?}", f[c.arrival]))?;
    if !arrival.is_finite() || !(0.0..=1e9).contains(&arrival) {
        return Err(format!(
            "arrival_s must be finite, ≥ 0 and ≤ 1e9, got {}",
            f[c.arrival]
        ));
    }
    // An empty priority is left to the seeded mix, as Azure rows are.
    let priority = match cell(c.priority) {
        "" => None,
        p => Some(Priority::from_str(p).map_err(|e| e.to_string())?),
    };
    let deadline = match cell(c.deadline) {
        "" => None,
        d => {
            let ms: f64 = d
                .parse()
                .map_err(|_| format!("deadline_ms must be a number, got {d:?}"))?;
            if !ms.is_finite() || ms <= 0.0 || ms > 1e9 {
                return Err(format!("deadline_ms must be > 0 and ≤ 1e9, got {d}"));
            }
            Some(Duration::from_secs_f64(ms / 1e3))
        }
    };
    Ok((
        // Rounded: 0.3 s is 299999999.99999994 ns in f64.
        (arrival * 1e9).round() as u64,
        TraceRequest {
            arrival: Duration::ZERO,
            priority,
            tokens: count(f[c.tokens], "tokens")?,
            generated: None,
            deadline,
        },
    ))
}

/// A TIMESTAMP to ns since 1970: `YYYY-MM-DD HH:MM:SS[.fraction]` (the 2023
/// trace's form, read as UTC), with `T` for the space and an optional zone
/// (`Z`, `UTC`, `+HH:MM`, `-HHMM`, `+HH`, after a space or not) as the
/// later Azure traces and ISO 8601 write it, or plain seconds (a Unix time
/// or an offset), as other exporters do. Only differences between rows
/// matter to a replay.
fn parse_timestamp(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "TIMESTAMP must look like 2023-11-16 18:15:46.6805900 (optionally with T and a zone such as +00:00) or be seconds, got {s:?}"
        )
    };
    if s.parse::<f64>().is_ok() {
        return decimal_seconds(s).ok_or_else(bad);
    }
    let (date, time) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let (time, offset_s) = split_zone(time).ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    let num = |x: &str| {
        if !is_digits(x) {
            return Err(bad());
        }
        x.parse::<i64>().map_err(|_| bad())
    };
    let (year, month, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hour, minute) = (num(t[0])?, num(t[1])?);
    let (secs, frac) = t[2].split_once('.').unwrap_or((t[2], ""));
    let secs = num(secs)?;
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&secs)
        || !(1970..=9999).contains(&year)
    {
        return Err(bad());
    }
    let frac_ns = fraction_ns(frac).ok_or_else(bad)? as i64;
    let days = days_from_civil(year, month, day);
    let total_s = days * 86_400 + hour * 3_600 + minute * 60 + secs - offset_s;
    // In i128: ns since 1970 pass i64 in 2262 (and u64, the result, in 2554).
    let ns = i128::from(total_s) * 1_000_000_000 + i128::from(frac_ns);
    u64::try_from(ns).map_err(|_| {
        let when = if ns < 0 {
            "before 1970 UTC"
        } else {
            "after 2554 UTC"
        };
        format!("TIMESTAMP {s:?} is {when}, outside what nanoseconds since 1970 can hold")
    })
}

/// `SECONDS[.fraction]` to ns, exactly (an f64 would round a Unix time's
/// microseconds); `None` for a sign, an exponent, over 9 fraction digits or
/// more seconds than u64 nanoseconds hold (about 1.8e10 s, the year 2554).
fn decimal_seconds(s: &str) -> Option<u64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.len() > 11 || !is_digits(whole) {
        return None;
    }
    let frac_ns = fraction_ns(frac)?;
    let whole: u64 = whole.parse().ok()?;
    whole.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// The digits after a decimal point (none, or up to 9) as nanoseconds.
fn fraction_ns(frac: &str) -> Option<u64> {
    if frac.is_empty() {
        return Some(0);
    }
    if frac.len() > 9 || !is_digits(frac) {
        return None;
    }
    Some(frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32))
}

/// One or more ASCII digits and nothing else (no sign, no space).
fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Splits a zone suffix off a time of day: the time and the zone's offset
/// east of UTC in seconds (0 without a zone or for `Z`); `None` for a
/// malformed zone.
fn split_zone(time: &str) -> Option<(&str, i64)> {
    if let Some(t) = time
        .strip_suffix("UTC")
        .or_else(|| time.strip_suffix(['Z', 'z']))
    {
        return Some((t.trim_end(), 0));
    }
    let Some(at) = time.rfind(['+', '-']) else {
        return Some((time, 0));
    };
    let (t, zone) = time.split_at(at);
    let t = t.trim_end();
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits: String = zone[1..].chars().filter(|&c| c != ':').collect();
    if !(digits.len() == 2 || digits.len() == 4) || !is_digits(&digits) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((t, sign * (hours * 3_600 + minutes * 60)))
}

/// Days in `month` (1 to 12) of `year`, Gregorian: 2023-02-30 is refused,
/// not read as 2 March.
fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The seeded rule that gives a priority to trace rows without one.
///
/// Row `i` draws `splitmix64(seed + i) mod 100` and takes the level whose
/// cumulative share covers it. The default shares are 5% Critical, 15%
/// High, 40% Normal, 25% Low, 15% Background. The draw depends only on
/// the seed and the row index, so a replay is reproducible and every
/// policy in `convoy compare` sees the same priorities.
///
/// ```
/// use convoy_cli::trace::PriorityMix;
/// let mix = PriorityMix::default();
/// assert_eq!(mix.assign(7), mix.assign(7));
/// let critical = (0..10_000).filter(|&i| mix.assign(i) == convoy::Priority::Critical).count();
/// assert!((400..600).contains(&critical)); // about 5%
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityMix {
    /// The seed.
    pub seed: u64,
    /// Percent per level, summing to 100.
    pub shares: [u8; Priority::COUNT],
}

impl Default for PriorityMix {
    fn default() -> Self {
        Self {
            seed: 2023,
            shares: [5, 15, 40, 25, 15],
        }
    }
}

impl PriorityMix {
    /// The level of row `index`.
    pub fn assign(&self, index: usize) -> Priority {
        let mut state = self.seed.wrapping_add(index as u64);
        let draw = (convoy::model::splitmix64(&mut state) % 100) as u8;
        let mut covered = 0u8;
        for (p, share) in Priority::ALL.into_iter().zip(self.shares) {
            covered = covered.saturating_add(share);
            if draw < covered {
                return p;
            }
        }
        Priority::Background
    }

    /// The level of a trace row: its own, or the mix's.
    pub fn of(&self, index: usize, r: &TraceRequest) -> Priority {
        r.priority.unwrap_or_else(|| self.assign(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/corpus/trace_csv/seconds-overflow.csv`): a
    /// TIMESTAMP of whole seconds past what u64 nanoseconds hold overflowed
    /// (a panic with overflow checks, a wrapped arrival without); now it
    /// is the typed error naming the value.
    #[test]
    fn seconds_past_u64_nanoseconds_are_an_error_not_an_overflow() {
        let e = parse(
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n26314813511,0,74\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("26314813511"), "{e}");
        assert_eq!(
            decimal_seconds("18446744073"),
            Some(18_446_744_073_000_000_000)
        );
        assert_eq!(decimal_seconds("18446744074"), None);
        assert_eq!(decimal_seconds("18446744073.709551616"), None);
    }

    #[test]
    fn azure_rows_parse_relative_to_the_first() {
        let t = parse(
            "a.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n\
             2023-11-16 18:15:46.6805900,374,44\n\
             2023-11-16 18:15:50.9951690,396,109\n\
             2023-11-17 00:00:00,1,2\n",
        )
        .unwrap();
        assert_eq!(t.requests.len(), 3);
        assert_eq!(t.requests[0].arrival, Duration::ZERO);
        assert_eq!(t.requests[0].tokens, 374);
        assert_eq!(t.requests[0].generated, Some(44));
        assert_eq!(t.requests[1].arrival, Duration::from_nanos(4_314_579_000));
        // Across midnight: 5 h 44 min 13.31941 s after the first.
        assert_eq!(
            t.requests[2].arrival,
            Duration::from_nanos(((5 * 3600 + 44 * 60 + 13) * 1_000_000_000) + 319_410_000)
        );
        assert!(t.requests.iter().all(|r| r.priority.is_none()));
    }

    #[test]
    fn timestamps_in_iso_and_zoned_forms_agree() {
        let at = |s: &str| parse_timestamp(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let base = at("2024-05-10 00:00:00.009930");
        for same in [
            "2024-05-10T00:00:00.009930",
            "2024-05-10 00:00:00.009930+00:00",
            "2024-05-10T00:00:00.009930Z",
            "2024-05-10 02:00:00.009930+02:00",
            "2024-05-09 19:30:00.009930-0430",
            "2024-05-10 01:00:00.009930+01",
            "2024-05-10 00:00:00.009930 +00:00",
            "2024-05-10 00:00:00.009930 UTC",
        ] {
            assert_eq!(at(same), base, "{same}");
        }
        // 2024-05-10 00:00:00 UTC is Unix time 1715299200.
        assert_eq!(at("1715299200.00993"), base);
        assert_eq!(at("0.5"), 500_000_000);
        for bad in [
            "2024-05-10 00:00:00+25:00",
            "2024-05-10 00:00:00+0",
            "2024-05-10 00:00:00+ab:cd",
            "2024-05-10",
            "-1",
            "inf",
            "2024-05-10 +1:00:00",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generic_columns_are_found_by_name_and_optional_ones_may_be_absent() {
        // Reordered, with the deadline first and the priority last.
        let t = parse(
            "t.csv",
            "deadline_ms,tokens,arrival_s,priority\n250,9,0.5,low\n,4,0,\n",
        )
        .unwrap();
        let [first, second] = &t.requests[..] else {
            panic!("two rows expected, got {:?}", t.requests)
        };
        assert_eq!(first.tokens, 4);
        assert_eq!(first.arrival, Duration::ZERO);
        assert_eq!((first.priority, first.deadline), (None, None));
        assert_eq!(second.tokens, 9);
        assert_eq!(second.arrival, Duration::from_millis(500));
        assert_eq!(second.priority, Some(Priority::Low));
        assert_eq!(second.deadline, Some(Duration::from_millis(250)));

        // No priority column: every row goes to the mix, which gives the
        // same level to the same row index every time.
        let t = parse("t.csv", "arrival_s,tokens\n0,1\n0.1,2\n").unwrap();
        assert!(t.requests.iter().all(|r| r.priority.is_none()));
        let mix = PriorityMix::default();
        assert_eq!(mix.of(1, &t.requests[1]), mix.assign(1));

        // Trailing optional columns may be left off a row; an empty
        // priority in the positional form goes to the mix as well.
        let t = parse("t.csv", "arrival_s,tokens,priority,deadline_ms\n0,3\n").unwrap();
        assert_eq!(
            (t.requests[0].priority, t.requests[0].deadline),
            (None, None)
        );
        let t = parse("t.csv", "0,,3\n").unwrap();
        assert_eq!((t.requests[0].tokens, t.requests[0].priority), (3, None));
    }

    #[test]
    fn exports_with_bom_quotes_and_header_case_load() {
        let t = parse(
            "x.csv",
            "\u{feff}timestamp,contexttokens,generatedtokens\r\n\
             \"2024-05-10 00:00:01+00:00\",\"12\",\"3\"\r\n\
             \"2024-05-10 00:00:00+00:00\",7,1\r\n",
        )
        .unwrap();
        assert_eq!(t.requests.len(), 2);
        assert_eq!(t.requests[0].tokens, 7);
        assert_eq!(t.requests[1].arrival, Duration::from_secs(1));
        let t = parse(
            "g.csv",
            "\u{feff}Arrival_s,Priority,Tokens\n0.25,\"high\",4\n",
        )
        .unwrap();
        assert_eq!(t.requests[0].priority, Some(Priority::High));
        assert_eq!(t.requests[0].arrival, Duration::from_millis(250));
    }

    #[test]
    fn quoting_is_csv_and_comments_may_be_indented() {
        // A quoted field may hold a comma: it is one field, here an
        // unknown priority, not a row of four fields.
        match parse(
            "q.csv",
            "arrival_s,priority,tokens\n0,high,1\n0.1,\"hi,gh\",3\n",
        ) {
            Err(TraceError::Malformed { line, reason, .. }) => {
                assert_eq!(line, 3, "{reason}");
                assert!(reason.contains("unknown priority \"hi,gh\""), "{reason}");
            }
            other => panic!("expected a malformed row, got {other:?}"),
        }
        let t = parse(
            "q.csv",
            "  # exported by hand\narrival_s,\"priority\",tokens\n\"0.5\",\"low\",\"9\"\n   \n",
        )
        .unwrap();
        assert_eq!(t.requests.len(), 1);
        assert_eq!(
            (t.requests[0].priority, t.requests[0].tokens),
            (Some(Priority::Low), 9)
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_names_its_line() {
        let dir = std::env::temp_dir().join(format!("convoy-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.csv");
        std::fs::write(
            &path,
            b"arrival_s,priority,tokens\n0,high,1\n0.5,h\xffigh,2\n",
        )
        .unwrap();
        let e = load(&path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        match &e {
            TraceError::Malformed { line, reason, .. } => {
                assert_eq!(*line, 3, "{e}");
                assert!(reason.contains("not UTF-8"), "{e}");
            }
            other => panic!("expected a malformed file, got {other:?}"),
        }
    }

    /// One generic row as a test writes it: arrival in ms, level, tokens,
    /// deadline in ms.
    type Row = (u32, usize, u32, Option<u32>);

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever way an exporter writes a generic trace (a header or
        /// none, columns in any order, names or level numbers, quoted or
        /// padded fields, CRLF, a byte-order mark, blank and comment
        /// lines), it reads back as the rows written, in arrival order
        /// (stable: equal arrivals keep their file order).
        #[test]
        fn generic_traces_read_back_as_written(
            rows in proptest::collection::vec(
                (0u32..2_000_000, 0usize..5, proptest::prelude::any::<u32>(),
                 proptest::option::of(1u32..1_000_000)),
                1..40),
            header in proptest::prelude::any::<bool>(),
            reorder in proptest::prelude::any::<bool>(),
            by_number in proptest::prelude::any::<bool>(),
            quote in proptest::prelude::any::<bool>(),
            pad in proptest::prelude::any::<bool>(),
            crlf in proptest::prelude::any::<bool>(),
            bom in proptest::prelude::any::<bool>(),
            comment in proptest::prelude::any::<bool>(),
        ) {
            let text = write_generic(&rows, header, reorder, by_number, quote, pad, crlf, bom, comment);
            let t = parse("p.csv", &text).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{text}")))?;
            let mut want: Vec<Row> = rows.clone();
            want.sort_by_key(|r| r.0);
            let got: Vec<Row> = t
                .requests
                .iter()
                .map(|r| (
                    (r.arrival.as_nanos() / 1_000_000) as u32,
                    r.priority.expect("every row names its level").index(),
                    r.tokens,
                    r.deadline.map(|d| d.as_millis() as u32),
                ))
                .collect();
            proptest::prop_assert_eq!(got, want, "{}", text);
            for r in &t.requests {
                proptest::prop_assert_eq!(r.arrival.as_nanos() % 1_000_000, 0, "arrival {:?} is not whole ms", r.arrival);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// An Azure TIMESTAMP in any of its forms reads as the instant a
        /// plain count of days, hours and nanoseconds gives, and an
        /// impossible date (30 February, 31 April) is refused.
        #[test]
        fn timestamps_read_as_the_instant_they_name(
            year in 1970i64..2700,
            // Month and day ends drawn often: February, 29 to 31.
            month in proptest::prop_oneof![1i64..=12, proptest::strategy::Just(2i64)],
            day in proptest::prop_oneof![1i64..=31, 28i64..=31],
            (hour, minute, second) in (0i64..24, 0i64..60, 0i64..60),
            digits in 0usize..=9,
            frac in 0u64..1_000_000_000,
            zone in -(23 * 60 + 59)..=(23i64 * 60 + 59),
            form in 0usize..4,
        ) {
            // The reference, counted the long way.
            let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let lengths = |y: i64| [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let valid = day <= lengths(year)[(month - 1) as usize];
            let days: i64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum::<i64>()
                + lengths(year)[..(month - 1) as usize].iter().sum::<i64>()
                + day - 1;
            let frac_text = format!("{frac:09}")[..digits].to_owned();
            let frac_ns = if digits == 0 { 0 } else { frac_text.parse::<u64>().unwrap() * 10u64.pow(9 - digits as u32) };
            let zone_text = match form {
                0 => String::new(),
                1 => "Z".to_owned(),
                _ => format!(
                    "{}{:02}:{:02}",
                    if zone < 0 { '-' } else { '+' },
                    zone.abs() / 60,
                    zone.abs() % 60
                ),
            };
            let offset_s = if form >= 2 { zone * 60 } else { 0 };
            let sep = if form == 3 { 'T' } else { ' ' };
            let text = format!(
                "{year:04}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{}{}{zone_text}",
                if digits == 0 { "" } else { "." },
                frac_text
            );
            let got = parse_timestamp(&text);
            if !valid {
                proptest::prop_assert!(got.is_err(), "{} read as {:?}", text, got);
            } else {
                let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_s;
                let ns = i128::from(secs) * 1_000_000_000 + i128::from(frac_ns);
                match u64::try_from(ns) {
                    Ok(ns) => proptest::prop_assert_eq!(got, Ok(ns), "{}", text),
                    // Before the epoch once the zone is taken off, or past
                    // what u64 nanoseconds hold (2554).
                    Err(_) => proptest::prop_assert!(got.is_err(), "{} read as {:?}", text, got),
                }
            }
        }
    }

    /// Writes `rows` as a generic CSV, the way the proptest varies it.
    #[allow(clippy::too_many_arguments)]
    fn write_generic(
        rows: &[Row],
        header: bool,
        reorder: bool,
        by_number: bool,
        quote: bool,
        pad: bool,
        crlf: bool,
        bom: bool,
        comment: bool,
    ) -> String {
        let nl = if crlf { "\r\n" } else { "\n" };
        let field = |s: String| {
            let s = if quote { format!("\"{s}\"") } else { s };
            if pad {
                format!("  {s} ")
            } else {
                s
            }
        };
        // Column order: positional without a header; any order with one.
        let order: [usize; 4] = if header && reorder {
            [2, 3, 0, 1]
        } else {
            [0, 1, 2, 3]
        };
        let names = ["arrival_s", "priority", "tokens", "deadline_ms"];
        let mut text = String::new();
        if bom {
            text.push('\u{feff}');
        }
        if comment {
            text.push_str("# written by a test");
            text.push_str(nl);
        }
        if header {
            let cols: Vec<String> = order
                .iter()
                .map(|&i| field(names[i].to_uppercase()))
                .collect();
            text.push_str(&cols.join(","));
            text.push_str(nl);
        }
        for (i, &(ms, level, tokens, deadline)) in rows.iter().enumerate() {
            let level = if by_number {
                level.to_string()
            } else {
                Priority::ALL[level].as_str().to_owned()
            };
            let cells = [
                format!("{}.{:03}", ms / 1000, ms % 1000),
                level,
                tokens.to_string(),
                deadline.map_or(String::new(), |d| d.to_string()),
            ];
            let cols: Vec<String> = order.iter().map(|&c| field(cells[c].clone())).collect();
            text.push_str(&cols.join(","));
            text.push_str(nl);
            if comment && i % 7 == 3 {
                text.push_str(nl);
            }
        }
        text
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let cases = [
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,374\n",
                2,
                "expected 3 fields",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n\n2023-11-16 18:15:46.1,374,1\n2023-13-16 18:15:46.1,374,1\n",
                4,
                "TIMESTAMP must look like",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,-3,1\n",
                2,
                "ContextTokens must be a whole number",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2600-01-01 00:00:00,3,1\n",
                2,
                "is after 2554 UTC",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n1970-01-01 00:30:00+01:00,3,1\n",
                2,
                "is before 1970 UTC",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-29 00:00:00,3,1\n",
                2,
                "TIMESTAMP must look like",
            ),
            ("arrival_s,priority,tokens\n0,high,x\n", 2, "tokens must be"),
            (
                "arrival_s,priority,tokens\n0,high,1\n1,high,4294967296\n",
                3,
                "tokens must be a whole number from 0 to 4294967295",
            ),
            ("arrival_s,priority,tokens\n-1,high,1\n", 2, "arrival_s must be finite"),
            ("arrival_s,priority,tokens\nNaN,high,1\n", 2, "arrival_s must be finite"),
            ("0,high,1,0\n", 1, "deadline_ms must be > 0"),
            ("0,high,1\n1,high\n", 2, "expected 3 to 4 fields, got 2"),
            ("0,high,1,5,9\n", 1, "expected 3 to 4 fields, got 5"),
            ("arrival_s,tokens\n0,1,2\n", 2, "expected 2 fields, got 3"),
            ("time,tokens\n", 1, "unknown format"),
            ("arrival_s,priority\n", 1, "no tokens column"),
            ("arrival_s,tokens,deadline\n", 1, "unknown column \"deadline\""),
            ("arrival_s,tokens,tokens\n", 1, "\"tokens\" appears twice"),
        ];
        for (text, line, reason) in cases {
            match parse("t.csv", text) {
                Err(TraceError::Malformed {
                    path,
                    line: l,
                    reason: r,
                }) => {
                    assert_eq!((path.as_str(), l), ("t.csv", line), "{text:?}: {r}");
                    assert!(r.contains(reason), "{text:?}: {r}");
                }
                other => panic!("{text:?}: expected a malformed error, got {other:?}"),
            }
        }
        assert!(matches!(
            parse("t.csv", "# nothing\n\n"),
            Err(TraceError::Empty { .. })
        ));
        assert!(matches!(
            parse("t.csv", "arrival_s,priority,tokens\n"),
            Err(TraceError::Empty { .. })
        ));
        assert!(matches!(
            load(Path::new("/nonexistent/trace.csv")),
            Err(TraceError::Io { .. })
        ));
    }

    #[test]
    fn the_mix_follows_its_shares() {
        let mix = PriorityMix::default();
        let mut counts = [0usize; Priority::COUNT];
        for i in 0..100_000 {
            counts[mix.assign(i).index()] += 1;
        }
        for (c, share) in counts.iter().zip(mix.shares) {
            let expected = share as usize * 1000;
            assert!(c.abs_diff(expected) < expected / 10 + 100, "{counts:?}");
        }
        let other = PriorityMix { seed: 7, ..mix };
        assert!((0..100).any(|i| other.assign(i) != mix.assign(i)));
    }

    #[test]
    fn the_bundled_trace_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/azure_llm_conv_2023.csv");
        let t = load(&path).unwrap();
        assert_eq!(t.requests.len(), 19_366);
        assert!(t.span() > Duration::from_secs(3000) && t.span() < Duration::from_secs(4000));
        assert!(t.requests.windows(2).all(|w| w[0].arrival <= w[1].arrival));
    }
}
