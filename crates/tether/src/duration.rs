//! Durations as users write them on the command line and in Application specs: `90`,
//! `90s`, `2m`, `1h`, `500ms`, and Go's compound form that Flux and Argo CD users write and
//! Flux prints (`1m30s`, `5m0s`, `1h30m`); and the one doubling wait every retry uses.

use std::time::Duration;

/// Parses `90` (seconds), `90s`, `2m`, `1h`, `500ms`, and compounds like `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{text:?} is too large"));
    }
    let invalid = || format!("{text:?} is not a duration like 30s, 2m or 1h");
    if text.is_empty() {
        return Err(invalid());
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let one = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            unit => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
                ));
            }
        };
        let part = u32::try_from(value)
            .ok()
            .and_then(|v| one.checked_mul(v))
            .ok_or_else(|| format!("{text:?} is too large"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{text:?} is too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Waits that start at `first` and double up to `most`, without end (backon's exponential
/// backoff, no jitter): the retries of drift watches and failed syncs, the pauses of health
/// and CRD checks.
pub fn doubling(first: Duration, most: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(most)
        .with_factor(2.0)
        .without_max_times()
}

/// Now, to the second, as RFC 3339 (what Kubernetes and OCI annotations write).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_waits_double_from_the_first_and_stop_at_the_most() {
        use backon::BackoffBuilder;
        let waits: Vec<u64> = doubling(Duration::from_millis(50), Duration::from_secs(2))
            .build()
            .take(8)
            .map(|wait| wait.as_millis() as u64)
            .collect();
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn durations_parse_like_kubectl_timeouts() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("1m30").is_err());
    }

    #[test]
    fn go_compound_durations_parse_as_flux_writes_them() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m0s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1s500ms").unwrap(),
            Duration::from_millis(1500)
        );
    }
}
