//! Sizes as users write them on the command line and in Application specs, with
//! Kubernetes' quantity suffixes: `512Mi`, `1Gi`, `300M`, `1048576`.

/// Parses a size in bytes: a whole number with an optional suffix Ki, Mi, Gi (powers of
/// 1024) or k, M, G (powers of 1000), as in a container's memory limit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512Mi or 1Gi"))?;
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use Ki, Mi, Gi (or k, M, G)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size as a user reads it: `256 MiB`, `1.5 GiB`, `900 KiB`, `84 bytes` (rounded down).
pub fn show_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB && !bytes.is_multiple_of(GIB) {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= GIB {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_kubernetes_quantities() {
        assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("300M").unwrap(), 300_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5Ti").is_err());
        assert!(parse_size("99999999999999Gi").is_err());
        assert_eq!(show_size(256 << 20), "256 MiB");
        assert_eq!(show_size(3 << 29), "1.5 GiB");
        assert_eq!(show_size(2048), "2 KiB");
        assert_eq!(show_size(1000), "1000 bytes");
    }
}
