//! Human quantities in device profiles: `"3.5 GiB"`, `"40 GFLOP/s"`, `"100 Mbit/s"`,
//! `"20 GB/s"`, `"5 ms"`. Decimal prefixes are powers of 1000, binary ones (`KiB`,
//! `MiB`, `GiB`, `TiB`) of 1024; bits are an eighth of a byte.

/// What a quantity measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bytes (`B`, `kB`, `MB`, `GB`, `TB`, `KiB`, `MiB`, `GiB`, `TiB`).
    Bytes,
    /// Floating-point operations per second (`FLOP/s`, `kFLOP/s` … `TFLOP/s`).
    Flops,
    /// Bytes per second (`B/s` … `GB/s`, `bit/s` … `Gbit/s`, also `bps`-style `Mbps`).
    Bandwidth,
    /// Seconds (`s`, `ms`, `us`, `µs`, `ns`).
    Duration,
}

impl Kind {
    fn examples(self) -> &'static str {
        match self {
            Kind::Bytes => "\"3.5 GiB\" or \"512 MB\"",
            Kind::Flops => "\"40 GFLOP/s\"",
            Kind::Bandwidth => "\"100 Mbit/s\" or \"20 GB/s\"",
            Kind::Duration => "\"5 ms\"",
        }
    }
}

fn decimal_prefix(p: &str) -> Option<f64> {
    Some(match p {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        _ => return None,
    })
}

/// Parse `text` as a quantity of `kind`, in base units (bytes, FLOP/s, bytes/s, s).
pub fn parse(text: &str, kind: Kind) -> Result<f64, String> {
    let bad = || format!("`{text}` is not a quantity like {}", kind.examples());
    let t = text.trim();
    let split =
        t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-' || c == '+')).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !value.is_finite() {
        return Err(bad());
    }
    let scale = match kind {
        Kind::Bytes => match unit {
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0f64.powi(4),
            u => decimal_prefix(u.strip_suffix('B').ok_or_else(bad)?).ok_or_else(bad)?,
        },
        Kind::Flops => {
            decimal_prefix(unit.strip_suffix("FLOP/s").or_else(|| unit.strip_suffix("FLOPS")).ok_or_else(bad)?)
                .ok_or_else(bad)?
        }
        Kind::Bandwidth => {
            if let Some(p) = unit.strip_suffix("bit/s").or_else(|| unit.strip_suffix("bps")) {
                decimal_prefix(p).ok_or_else(bad)? / 8.0
            } else if let Some(p) = unit.strip_suffix("iB/s") {
                match p {
                    "K" => 1024.0,
                    "M" => 1024.0 * 1024.0,
                    "G" => 1024.0f64.powi(3),
                    _ => return Err(bad()),
                }
            } else {
                decimal_prefix(unit.strip_suffix("B/s").ok_or_else(bad)?).ok_or_else(bad)?
            }
        }
        Kind::Duration => match unit {
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        },
    };
    Ok(value * scale)
}

/// Format bytes for people (`1.5 GiB`).
pub fn bytes_text(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n:.0} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// A quantity as a profile states it, with the prefix that puts it in [1, 1000) and four
/// significant digits (`5.262 GFLOP/s`, `250.0 MB/s`, `2.000 us`), so that what
/// [`parse`] reads back is within 0.05% of `value` at any magnitude. Bytes take
/// [`bytes_text`].
pub fn text(value: f64, kind: Kind) -> String {
    const DECIMAL: &[(&str, f64)] = &[("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)];
    let (unit, prefixes): (&str, &[(&str, f64)]) = match kind {
        Kind::Bytes => return bytes_text(value),
        Kind::Flops => ("FLOP/s", DECIMAL),
        Kind::Bandwidth => ("B/s", DECIMAL),
        Kind::Duration => ("s", &[("", 1.0), ("m", 1e-3), ("u", 1e-6), ("n", 1e-9)]),
    };
    if value == 0.0 || !value.is_finite() {
        return format!("{value} {}{unit}", prefixes.last().map_or("", |p| p.0));
    }
    let (p, scale) = prefixes.iter().find(|(_, s)| value.abs() >= *s).copied().unwrap_or(prefixes[prefixes.len() - 1]);
    let v = value / scale;
    let decimals = (3 - v.abs().log10().floor() as i32).clamp(0, 3) as usize;
    format!("{v:.decimals$} {p}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_written_as_profiles_read_them() {
        for (v, kind, shown) in [
            (5.262e9, Kind::Flops, "5.262 GFLOP/s"),
            (118.81e9, Kind::Flops, "118.8 GFLOP/s"),
            (2.5e8, Kind::Bandwidth, "250.0 MB/s"),
            (1e15, Kind::Bandwidth, "1.000 PB/s"),
            (3.0, Kind::Bandwidth, "3.000 B/s"),
            (2e-6, Kind::Duration, "2.000 us"),
            (0.0, Kind::Duration, "0 ns"),
            (1.5e-11, Kind::Duration, "0.015 ns"),
        ] {
            assert_eq!(text(v, kind), shown);
            let back = parse(&text(v, kind), kind).unwrap();
            assert!((back - v).abs() <= 5e-4 * v.abs() + 1e-11, "{v} → {shown} → {back}");
        }
    }

    #[test]
    fn parses_the_units_profiles_use() {
        assert_eq!(parse("3.5 GiB", Kind::Bytes), Ok(3.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse("512 MB", Kind::Bytes), Ok(512e6));
        assert_eq!(parse("40 GFLOP/s", Kind::Flops), Ok(40e9));
        assert_eq!(parse("1.5TFLOP/s", Kind::Flops), Ok(1.5e12));
        assert_eq!(parse("100 Mbit/s", Kind::Bandwidth), Ok(12.5e6));
        assert_eq!(parse("20 GB/s", Kind::Bandwidth), Ok(20e9));
        assert_eq!(parse("5 ms", Kind::Duration), Ok(0.005));
        assert!(parse("5 parsecs", Kind::Duration).unwrap_err().contains("\"5 ms\""));
        assert!(parse("fast", Kind::Flops).is_err());
        assert!(parse("3 GiB", Kind::Flops).is_err());
    }
}
