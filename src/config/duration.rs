//! Durations as users write them in DMR and Ollama settings: Go-style `"5m"`, `"1h30m"`, `"250ms"`, `"10s"`, a bare
//! number of seconds, and the keep-alive specials `"0"` (unload right away) and any negative value (never unload).
//! Pure parsing and formatting; knows nothing of where a duration is used.

use std::time::Duration;

/// How long an idle runner is kept before it is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Stop the runner once it has been idle this long (zero: as soon as its last request ends).
    For(Duration),
    /// Never stop it for idleness.
    Forever,
}

impl KeepAlive {
    pub const DEFAULT: KeepAlive = KeepAlive::For(Duration::from_secs(300));

    /// This keep-alive, no longer than `max` (`Forever` is longer than any duration).
    pub fn capped(self, max: Option<KeepAlive>) -> KeepAlive {
        match (self, max) {
            (_, None) | (_, Some(KeepAlive::Forever)) => self,
            (KeepAlive::Forever, Some(m)) => m,
            (KeepAlive::For(d), Some(KeepAlive::For(m))) => KeepAlive::For(d.min(m)),
        }
    }

    /// Parses `"5m"`, `"0"`, `"-1"`, `"30"` (seconds) and the like.
    pub fn parse(s: &str) -> Result<KeepAlive, String> {
        let t = s.trim();
        if let Some(rest) = t.strip_prefix('-') {
            // Ollama and DMR: any negative value means "keep forever".
            return parse_duration(rest).map(|_| KeepAlive::Forever);
        }
        parse_duration(t).map(KeepAlive::For)
    }
}

impl std::fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepAlive::Forever => f.write_str("-1"),
            KeepAlive::For(d) => f.write_str(&format_go(*d)),
        }
    }
}

/// Parses a Go-style duration (`1h2m3s`, `1.5s`, `250ms`, `0`) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs, s);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number at {rest:?}"
            ));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ms, s, m, h)"
                ))
            }
            u => return Err(format!("invalid duration {s:?}: unknown unit {u:?}")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    secs_to_duration(total, s)
}

fn secs_to_duration(secs: f64, original: &str) -> Result<Duration, String> {
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("invalid duration {original:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats like Go's `time.Duration.String()` for whole units: `5m0s`, `1h0m0s`, `1.5s`, `0s`.
pub fn format_go(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return if ms == 0 {
            "0s".into()
        } else {
            format!("{ms}ms")
        };
    }
    let total = d.as_secs_f64();
    let h = (total / 3600.0).floor();
    let m = ((total - h * 3600.0) / 60.0).floor();
    let s = total - h * 3600.0 - m * 60.0;
    let s = if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{}s", trim_float(s))
    };
    match (h as u64, m as u64) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

fn trim_float(x: f64) -> String {
    let t = format!("{x:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_shortens_long_keep_alives_and_forever() {
        let (m5, h1) = (
            KeepAlive::For(Duration::from_secs(300)),
            KeepAlive::For(Duration::from_secs(3600)),
        );
        assert_eq!(h1.capped(Some(m5)), m5);
        assert_eq!(KeepAlive::Forever.capped(Some(m5)), m5);
        assert_eq!(m5.capped(Some(h1)), m5, "shorter ones stay");
        assert_eq!(
            KeepAlive::For(Duration::ZERO).capped(Some(m5)),
            KeepAlive::For(Duration::ZERO)
        );
        assert_eq!(KeepAlive::Forever.capped(None), KeepAlive::Forever);
        assert_eq!(h1.capped(Some(KeepAlive::Forever)), h1);
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn keep_alive_specials() {
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-5m"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("0"), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(KeepAlive::DEFAULT.to_string(), "5m0s");
        assert_eq!(KeepAlive::Forever.to_string(), "-1");
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go(Duration::from_millis(20)), "20ms");
    }
}
