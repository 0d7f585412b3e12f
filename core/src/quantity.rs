//! Kubernetes-style quantities: `2`, `0.5`, `"500m"`, `"4Gi"`, `"1.5G"`, `"1e3"`.
//!
//! The grammar follows Kubernetes' `resource.Quantity`
//! (k8s.io/apimachinery/pkg/api/resource): a decimal number, an optional
//! exponent, then an optional suffix, binary (`Ki Mi Gi Ti Pi Ei`, powers of
//! 1024) or decimal (`n u m k M G T P E`, powers of 1000). As in Kubernetes,
//! a value that is not a whole number of the target unit is rounded up, so a
//! request never shrinks. Parsing is exact: the digits are kept as integers,
//! never as floats.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::SpecError;
use crate::resources::{Bytes, MilliCpu, MilliGpu, Resources};

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("invalid quantity {0:?}: expected a number with an optional suffix (Ki Mi Gi Ti Pi Ei, m k M G T P E), e.g. \"500m\" or \"4Gi\"")]
    Syntax(String),
    #[error("quantity {0:?} must not be negative")]
    Negative(String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// A quantity as written in YAML: a number or a string.
///
/// Kept unparsed until validation so the error can name the field it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuantityText {
    Int(i64),
    Float(f64),
    Text(String),
}

impl QuantityText {
    pub fn as_text(&self) -> String {
        match self {
            QuantityText::Int(i) => i.to_string(),
            QuantityText::Float(f) => f.to_string(),
            QuantityText::Text(s) => s.clone(),
        }
    }
}

impl From<&str> for QuantityText {
    fn from(s: &str) -> Self {
        QuantityText::Text(s.to_string())
    }
}

/// Parses the quantities of a request or a machine's capacity. `field` is
/// the path of the mapping that holds them, for errors; cpu and memory must
/// be greater than zero, disk and gpu default to zero.
pub fn parse_resources(
    field: &str,
    cpu: &QuantityText,
    memory: &QuantityText,
    disk: Option<&QuantityText>,
    gpu: Option<&QuantityText>,
) -> Result<Resources, SpecError> {
    let parse = |name: &str,
                 q: Option<&QuantityText>,
                 f: fn(&str) -> Result<u64, QuantityError>| {
        q.map_or(Ok(0), |q| {
            f(&q.as_text()).map_err(|e| SpecError::new(format!("{field}.{name}"), e.to_string()))
        })
    };
    let cpu = parse("cpu", Some(cpu), |s| parse_cpu(s).map(|v| v.0))?;
    let memory = parse("memory", Some(memory), |s| parse_bytes(s).map(|v| v.0))?;
    let disk = parse("disk", disk, |s| parse_bytes(s).map(|v| v.0))?;
    let gpu = parse("gpu", gpu, |s| parse_gpu(s).map(|v| v.0))?;
    for (name, v) in [("cpu", cpu), ("memory", memory)] {
        if v == 0 {
            return Err(SpecError::new(
                format!("{field}.{name}"),
                "must be greater than zero",
            ));
        }
    }
    Ok(Resources::new(cpu, memory).with_disk(disk).with_gpu(gpu))
}

/// Parses a cpu amount (`2`, `0.5`, `"500m"`) into millicores.
pub fn parse_cpu(s: &str) -> Result<MilliCpu, QuantityError> {
    parse_scaled(s, 1000).map(MilliCpu)
}

/// Parses a GPU amount (`1`, `0.25`, `"250m"`) into thousandths of a GPU.
pub fn parse_gpu(s: &str) -> Result<MilliGpu, QuantityError> {
    parse_scaled(s, 1000).map(MilliGpu)
}

/// Parses a memory or disk amount (`"4Gi"`, `"1.5G"`, `1048576`) into bytes.
pub fn parse_bytes(s: &str) -> Result<Bytes, QuantityError> {
    parse_scaled(s, 1).map(Bytes)
}

/// Parses `s` and returns its value times `unit`, rounded up to an integer.
fn parse_scaled(s: &str, unit: u64) -> Result<u64, QuantityError> {
    let text = s.trim();
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(s.to_string());
    let too_large = || QuantityError::TooLarge(s.to_string());

    let (negative, body) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };

    // Split the number from the suffix: the number is digits and at most one
    // '.', then optionally an exponent 'e'/'E' with a signed integer. A
    // trailing 'E' alone is the exa suffix, as in Kubernetes.
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut int_digits = String::new();
    let mut frac_digits = String::new();
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        int_digits.push(bytes[i] as char);
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            frac_digits.push(bytes[i] as char);
            i += 1;
        }
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(syntax());
    }
    let mut exponent: i64 = 0;
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        let rest = &body[i + 1..];
        let digits_start = usize::from(rest.starts_with(['+', '-']));
        if rest.len() > digits_start && rest[digits_start..].bytes().all(|b| b.is_ascii_digit()) {
            exponent = rest.parse::<i64>().map_err(|_| too_large())?;
            i = bytes.len();
        }
    }
    let suffix = &body[i..];
    let (mut pow10, pow1024): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        _ => return Err(syntax()),
    };
    pow10 = pow10.checked_add(exponent).ok_or_else(too_large)?;

    // value = digits * 10^(pow10 - frac_len) * 1024^pow1024 * unit
    let digits = format!("{int_digits}{frac_digits}");
    let digits = digits.trim_start_matches('0');
    let all_zero = digits.is_empty();
    if negative && !all_zero {
        return Err(QuantityError::Negative(s.to_string()));
    }
    if all_zero {
        return Ok(0);
    }
    // More than 38 significant digits cannot fit a u128 and would be absurd.
    if digits.len() > 38 {
        return Err(too_large());
    }
    let mut numerator: u128 = digits.parse().map_err(|_| syntax())?;
    numerator = numerator
        .checked_mul(1024u128.pow(pow1024))
        .and_then(|n| n.checked_mul(u128::from(unit)))
        .ok_or_else(too_large)?;
    let scale = pow10 - frac_digits.len() as i64;
    let value: u128 = if scale >= 0 {
        if scale > 38 {
            return Err(too_large());
        }
        numerator
            .checked_mul(10u128.pow(scale as u32))
            .ok_or_else(too_large)?
    } else {
        let d = -scale;
        if d > 38 {
            // Smaller than any unit: rounds up to one.
            1
        } else {
            numerator.div_ceil(10u128.pow(d as u32))
        }
    };
    u64::try_from(value).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu("2"), Ok(MilliCpu(2000)));
        assert_eq!(parse_cpu("0.5"), Ok(MilliCpu(500)));
        assert_eq!(parse_cpu("500m"), Ok(MilliCpu(500)));
        assert_eq!(parse_cpu("1500m"), Ok(MilliCpu(1500)));
        assert_eq!(parse_cpu(".25"), Ok(MilliCpu(250)));
        assert_eq!(parse_cpu("1e1"), Ok(MilliCpu(10_000)));
        assert_eq!(parse_cpu("+3"), Ok(MilliCpu(3000)));
        // Below one millicore rounds up, as Kubernetes does.
        assert_eq!(parse_cpu("0.0001"), Ok(MilliCpu(1)));
        assert_eq!(parse_cpu("100u"), Ok(MilliCpu(1)));
        assert_eq!(parse_cpu("0"), Ok(MilliCpu(0)));
    }

    #[test]
    fn byte_forms() {
        assert_eq!(parse_bytes("4Gi"), Ok(Bytes(4 << 30)));
        assert_eq!(parse_bytes("1.5G"), Ok(Bytes(1_500_000_000)));
        assert_eq!(parse_bytes("128974848"), Ok(Bytes(128_974_848)));
        assert_eq!(parse_bytes("129e6"), Ok(Bytes(129_000_000)));
        assert_eq!(parse_bytes("123Mi"), Ok(Bytes(123 << 20)));
        assert_eq!(parse_bytes("1.5Ki"), Ok(Bytes(1536)));
        assert_eq!(parse_bytes("1k"), Ok(Bytes(1000)));
        assert_eq!(parse_bytes("2E"), Ok(Bytes(2_000_000_000_000_000_000)));
        // A fraction of a byte rounds up.
        assert_eq!(parse_bytes("500m"), Ok(Bytes(1)));
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(parse_cpu(""), Err(QuantityError::Empty));
        assert!(matches!(parse_cpu("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(
            parse_bytes("-1Gi"),
            Err(QuantityError::Negative(_))
        ));
        assert!(matches!(parse_cpu("abc"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_cpu("1.2.3"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_bytes("4GB"), Err(QuantityError::Syntax(_))));
        assert!(matches!(parse_bytes("4 Gi"), Err(QuantityError::Syntax(_))));
        assert!(matches!(
            parse_bytes("20Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_cpu("1e300"),
            Err(QuantityError::TooLarge(_))
        ));
        let msg = parse_cpu("lots").unwrap_err().to_string();
        assert!(msg.contains("\"lots\""), "{msg}");
    }

    #[test]
    fn negative_zero_is_zero() {
        assert_eq!(parse_cpu("-0"), Ok(MilliCpu(0)));
    }
}
