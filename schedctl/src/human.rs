//! Amounts as people read them: `31.5Gi` rather than `33072176Ki`, and
//! `unlimited` rather than 18446744073709551615 (the "no limit" value).
//! Amounts that their unit divides exactly keep their exact form (`512Mi`,
//! `2`, `500m`), so that what a user typed reads back the same.

use sched_core::resources::{format_cpu, MilliCpu};

/// What an amount of `u64::MAX` means: no limit.
pub const UNLIMITED: &str = "unlimited";

/// Bytes in the largest binary suffix not above them: exact when it
/// divides them (`512Mi`), else with one decimal (`31.5Gi`).
pub fn bytes(b: u64) -> String {
    const SUFFIXES: [(&str, u64); 6] = [
        ("Ei", 1 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    if b == u64::MAX {
        return UNLIMITED.to_string();
    }
    for (suffix, unit) in SUFFIXES {
        if b >= unit {
            return if b.is_multiple_of(unit) {
                format!("{}{suffix}", b / unit)
            } else {
                format!("{}{suffix}", one_decimal(b, unit))
            };
        }
    }
    b.to_string()
}

/// Cpu (or GPU) in millis: whole cores (`2`), millicores below one core
/// (`500m`), else cores with one decimal (`2.5`).
pub fn cpu(millis: u64) -> String {
    if millis == u64::MAX {
        return UNLIMITED.to_string();
    }
    if millis < 1000 || millis.is_multiple_of(1000) {
        return format_cpu(MilliCpu(millis));
    }
    one_decimal(millis, 1000)
}

/// `n / unit` rounded to one decimal, without a trailing `.0`.
fn one_decimal(n: u64, unit: u64) -> String {
    // In tenths, rounded half up, in u128 so that nothing overflows.
    let tenths = (u128::from(n) * 10 + u128::from(unit) / 2) / u128::from(unit);
    if tenths % 10 == 0 {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        // 33072176Ki: the memory of a machine as the kernel reports it.
        assert_eq!(bytes(33_072_176 * 1024), "31.5Gi");
        assert_eq!(bytes(512 << 20), "512Mi");
        assert_eq!(bytes(2 << 30), "2Gi");
        assert_eq!(bytes(1536 << 20), "1.5Gi");
        assert_eq!(bytes(1000), "1000");
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1_000_000_000), "953.7Mi");
        assert_eq!(bytes(u64::MAX), "unlimited");
        assert_eq!(bytes(u64::MAX - 1), "16Ei");
    }

    #[test]
    fn cpu_reads_in_cores() {
        assert_eq!(cpu(2000), "2");
        assert_eq!(cpu(500), "500m");
        assert_eq!(cpu(2500), "2.5");
        assert_eq!(cpu(33_333), "33.3");
        assert_eq!(cpu(u64::MAX), "unlimited");
    }
}
