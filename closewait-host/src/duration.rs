//! Durations on the command line: `500ms`, `10s`, `5m`, `1h30m`.

use std::time::Duration;

/// Parse a duration such as `500ms`, `10s`, `5m` or `1h30m`.
pub fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 10s or 5m ({e})"))
}

/// [`parse`], refusing zero.
pub fn parse_positive(s: &str) -> Result<Duration, String> {
    match parse(s)? {
        d if d.is_zero() => Err("must be longer than zero".to_string()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse(" 10s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn errors_are_one_line() {
        for bad in ["soon", "", "5", "-1s", "5 parsecs"] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(parse_positive("0ms").is_err());
        assert!(parse_positive("1ms").is_ok());
    }
}
