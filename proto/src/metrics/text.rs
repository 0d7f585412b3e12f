//! The Prometheus text format (version 0.0.4), from the OpenMetrics text
//! that `prometheus_client` encodes.
//!
//! Prometheus itself asks for OpenMetrics (its `Accept` header says so) and
//! gets it as encoded. Other readers (`promtool check metrics`, older
//! scrapers, `curl`) read the older format, where a counter's `# HELP` and
//! `# TYPE` name the `_total` series itself and there are no `# UNIT` or
//! `# EOF` lines; this is the translation, line by line.

/// `openmetrics` in the Prometheus text format.
pub fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line waits for its TYPE line, which says whether the
    // name gets `_total`.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "gauge" | "histogram" | "summary" => ("", kind),
                // unknown, info, stateset, gaugehistogram: no 0.0.4 type.
                _ => ("", "untyped"),
            };
            match help.take() {
                Some((h, text)) if h == name => flush_help(&mut out, Some((h, text)), suffix),
                other => flush_help(&mut out, other, ""),
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take(), "");
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series() {
        let om = "# HELP calls Calls.\n# TYPE calls counter\ncalls_total{code=\"OK\"} 3\n\
                  # HELP wait Waits.\n# TYPE wait histogram\n# UNIT wait_seconds seconds\n\
                  wait_sum 1.0\nwait_count 1\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{code=\"OK\"} 3\n\
             # HELP wait Waits.\n# TYPE wait histogram\nwait_sum 1.0\nwait_count 1\n\
             # HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
