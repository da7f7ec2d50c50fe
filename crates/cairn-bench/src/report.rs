//! Collecting figures over runs, medians, ratios, targets, and the table / JSON output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use crate::json;
use crate::servers::Side;

/// Key of the count of fio jobs the watchdog killed (not a figure of the table).
pub const FIO_HUNG_JOBS: &str = "fio_hung_jobs";

/// One side's figures of one run, by key (see [`ROWS`]).
pub type Figures = BTreeMap<String, f64>;

pub fn metadata_key(operation: &str, depth: usize) -> String {
    format!("{operation}_qd{depth}")
}

#[derive(Clone, Copy)]
enum Target {
    /// Context only.
    None,
    /// Cairn at least this many times Ganesha's speed.
    RatioAtLeast(f64),
    /// Cairn at least this fraction of the `dd conv=fsync` write of the same run.
    DdWriteFractionAtLeast(f64),
}

struct Row {
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    lower_is_better: bool,
    target: Target,
}

const fn row(key: &'static str, label: &'static str, unit: &'static str, target: Target) -> Row {
    Row { key, label, unit, lower_is_better: false, target }
}

const RATIO_TARGET: Target = Target::RatioAtLeast(1.2);

const ROWS: &[Row] = &[
    row("seq_write", "seq write 1 MiB, qd16, incl. COMMIT", "MiB/s", Target::DdWriteFractionAtLeast(0.9)),
    row("seq_read", "seq read 1 MiB, qd16, cold cache", "MiB/s", RATIO_TARGET),
    row("rand_read", "random read 4 KiB, qd16", "IOPS", RATIO_TARGET),
    row("rand_write", "random write 4 KiB, qd16, incl. COMMIT", "IOPS", RATIO_TARGET),
    row("create_qd1", "CREATE, 1 in flight", "ops/s", RATIO_TARGET),
    row("create_qd16", "CREATE, 16 in flight", "ops/s", RATIO_TARGET),
    row("lookup_qd1", "LOOKUP, 1 in flight", "ops/s", RATIO_TARGET),
    row("lookup_qd16", "LOOKUP, 16 in flight", "ops/s", RATIO_TARGET),
    row("getattr_qd1", "GETATTR, 1 in flight", "ops/s", RATIO_TARGET),
    row("getattr_qd16", "GETATTR, 16 in flight", "ops/s", RATIO_TARGET),
    row("remove_qd1", "REMOVE, 1 in flight", "ops/s", RATIO_TARGET),
    row("remove_qd16", "REMOVE, 16 in flight", "ops/s", RATIO_TARGET),
    Row {
        key: "readdirplus",
        label: "list folder, READDIRPLUS",
        unit: "s",
        lower_is_better: true,
        target: RATIO_TARGET,
    },
    Row {
        key: "readdir",
        label: "list folder, READDIR",
        unit: "s",
        lower_is_better: true,
        target: RATIO_TARGET,
    },
    row("listing_fill", "fill that folder, CREATE, 16 in flight", "ops/s", Target::None),
];

const MACHINE_ROWS: &[(&str, &str, &str)] = &[
    ("dd_write", "dd write 1 MiB blocks, conv=fsync", "MiB/s"),
    ("dd_read", "dd read 1 MiB blocks, cold cache", "MiB/s"),
    ("loopback_tcp", "loopback TCP, one connection", "MiB/s"),
];

/// CPUs busy elsewhere (sampled before each side) above this mark the figures as noisy.
const BUSY_CPUS_NOISY: f64 = 0.25;

pub struct Report {
    size: u64,
    files: usize,
    dir_entries: usize,
    random_seconds: u64,
    runs: usize,
    machine: BTreeMap<String, Vec<f64>>,
    /// CPUs busy with other work just before each side started.
    busy_cpus: Vec<f64>,
    /// Side runs that failed, with their errors.
    failures: Vec<String>,
    sides: BTreeMap<&'static str, BTreeMap<String, Vec<f64>>>,
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 })
}

/// One table line, computed once for both output formats.
struct Line {
    row: &'static Row,
    cairn: Option<f64>,
    ganesha: Option<f64>,
    /// Cairn's speed over Ganesha's (> 1: Cairn faster), whatever the unit.
    ratio: Option<f64>,
    target: String,
    pass: Option<bool>,
}

pub fn format_value(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "-".to_owned(),
        Some(v) if unit == "s" => format!("{v:.3}"),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

pub fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Report {
    pub fn new(size: u64, files: usize, dir_entries: usize, random_seconds: u64, runs: usize) -> Self {
        Self {
            size,
            files,
            dir_entries,
            random_seconds,
            runs,
            machine: BTreeMap::new(),
            busy_cpus: Vec::new(),
            failures: Vec::new(),
            sides: BTreeMap::new(),
        }
    }

    pub fn add_machine(&mut self, figures: &BTreeMap<&'static str, f64>) {
        for (key, value) in figures {
            self.machine.entry((*key).to_owned()).or_default().push(*value);
        }
    }

    pub fn add_failure(&mut self, message: String) {
        self.failures.push(message);
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn add_busy_cpus(&mut self, load: f64) {
        self.busy_cpus.push(load);
    }

    fn busy_cpus_max(&self) -> f64 {
        self.busy_cpus.iter().copied().fold(0.0, f64::max)
    }

    pub fn add_side(&mut self, side: Side, figures: &Figures) {
        let side_figures = self.sides.entry(side.name()).or_default();
        for (key, value) in figures {
            side_figures.entry(key.clone()).or_default().push(*value);
        }
    }

    fn side_values(&self, side: Side, key: &str) -> &[f64] {
        self.sides.get(side.name()).and_then(|f| f.get(key)).map_or(&[], Vec::as_slice)
    }

    fn lines(&self) -> Vec<Line> {
        let dd_write = self.machine.get("dd_write").and_then(|v| median(v));
        ROWS.iter()
            .map(|row| {
                let cairn = median(self.side_values(Side::Cairn, row.key));
                let ganesha = median(self.side_values(Side::Ganesha, row.key));
                let ratio = match (cairn, ganesha) {
                    (Some(c), Some(g)) if row.lower_is_better && c > 0.0 => Some(g / c),
                    (Some(c), Some(g)) if !row.lower_is_better && g > 0.0 => Some(c / g),
                    _ => None,
                };
                let (target, pass) = match row.target {
                    Target::None => (String::new(), None),
                    Target::RatioAtLeast(min) => (format!(">= {min:.1}x ganesha"), ratio.map(|r| r >= min)),
                    Target::DdWriteFractionAtLeast(fraction) => match dd_write {
                        Some(dd) => (
                            format!(">= {:.0}% of dd ({:.0})", fraction * 100.0, fraction * dd),
                            cairn.map(|c| c >= fraction * dd),
                        ),
                        None => ("dd missing".to_owned(), None),
                    },
                };
                Line { row, cairn, ganesha, ratio, target, pass }
            })
            .collect()
    }

    fn parameters(&self) -> String {
        format!(
            "size {} MiB, {} files, {} entries listed, random tests {} s, fio iodepth 16, {} run(s), medians",
            self.size >> 20,
            self.files,
            self.dir_entries,
            self.random_seconds,
            self.runs
        )
    }

    pub fn to_table(&self, command: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nCairn vs NFS-Ganesha (FSAL VFS), {}", now_utc());
        let _ = writeln!(out, "command: {command}");
        let _ = writeln!(out, "{}\n", self.parameters());
        let _ = writeln!(out, "machine (fresh ext4 image on the same disk)");
        for (key, label, unit) in MACHINE_ROWS {
            let value = self.machine.get(*key).and_then(|v| median(v));
            let _ = writeln!(out, "  {label:<40} {:>9} {unit}", format_value(value, unit));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<42} {:<6} {:>9} {:>9} {:>8}  {:<22} result",
            "test", "unit", "cairn", "ganesha", "ratio", "target"
        );
        let lines = self.lines();
        for line in &lines {
            let ratio = line.ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
            let result = match line.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None if line.target.is_empty() => "",
                None => "-",
            };
            let _ = writeln!(
                out,
                "{:<42} {:<6} {:>9} {:>9} {:>8}  {:<22} {result}",
                line.row.label,
                line.row.unit,
                format_value(line.cairn, line.row.unit),
                format_value(line.ganesha, line.row.unit),
                ratio,
                line.target
            );
        }
        let judged: Vec<bool> = lines.iter().filter_map(|l| l.pass).collect();
        if self.busy_cpus_max() > BUSY_CPUS_NOISY {
            let _ = writeln!(
                out,
                "\nnote: the machine was busy (up to {:.2} CPUs used elsewhere when a side started); figures are noisy",
                self.busy_cpus_max()
            );
        }
        let hung: f64 = self.sides.values().filter_map(|f| f.get(FIO_HUNG_JOBS)).flatten().sum();
        if hung > 0.0 {
            let _ = writeln!(
                out,
                "note: {hung:.0} fio job(s) hung in libnfs's unmount after their I/O and were killed \
                 (their figures are complete; see docs/benchmarks.md)"
            );
        }
        for failure in &self.failures {
            let _ = writeln!(out, "FAILED {failure}");
        }
        let _ = writeln!(
            out,
            "\nratio = Cairn's speed / Ganesha's (for times: Ganesha's time / Cairn's); targets met: {} of {}",
            judged.iter().filter(|p| **p).count(),
            judged.len()
        );
        out
    }

    pub fn to_json(&self, command: &str) -> String {
        let list = json::list;
        let optional = json::optional;
        let mut out = json::report_header(
            command,
            &format!(
                "{{\"size_bytes\": {}, \"files\": {}, \"dir_entries\": {}, \"random_seconds\": {}, \
                 \"fio_iodepth\": 16, \"runs\": {}}}",
                self.size, self.files, self.dir_entries, self.random_seconds, self.runs
            ),
        );
        let machine: Vec<String> = MACHINE_ROWS
            .iter()
            .map(|(key, label, unit)| {
                let values = self.machine.get(*key).map_or(&[][..], Vec::as_slice);
                format!(
                    "    {{\"test\": {}, \"label\": {}, \"unit\": {}, \"median\": {}, \"runs\": {}}}",
                    json::quote(key),
                    json::quote(label),
                    json::quote(unit),
                    optional(median(values)),
                    list(values)
                )
            })
            .collect();
        let _ = writeln!(out, "  \"cpus_busy_elsewhere\": {},", list(&self.busy_cpus));
        let _ = writeln!(out, "  \"machine\": [\n{}\n  ],", machine.join(",\n"));
        let results: Vec<String> = self
            .lines()
            .iter()
            .map(|line| {
                format!(
                    "    {{\"test\": {}, \"label\": {}, \"unit\": {}, \"cairn\": {}, \"ganesha\": {}, \"ratio\": {}, \
                     \"target\": {}, \"pass\": {}, \"cairn_runs\": {}, \"ganesha_runs\": {}}}",
                    json::quote(line.row.key),
                    json::quote(line.row.label),
                    json::quote(line.row.unit),
                    optional(line.cairn),
                    optional(line.ganesha),
                    optional(line.ratio),
                    json::quote(&line.target),
                    line.pass.map_or("null", |p| if p { "true" } else { "false" }),
                    list(self.side_values(Side::Cairn, line.row.key)),
                    list(self.side_values(Side::Ganesha, line.row.key)),
                )
            })
            .collect();
        let failures: Vec<String> = self.failures.iter().map(|f| json::quote(f)).collect();
        let _ = writeln!(out, "  \"failures\": [{}],", failures.join(", "));
        let _ = writeln!(out, "  \"results\": [\n{}\n  ]", results.join(",\n"));
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn ratios_and_targets() {
        let mut report = Report::new(1 << 30, 10, 10, 1, 1);
        report.add_machine(&BTreeMap::from([("dd_write", 100.0)]));
        let cairn = Figures::from([("seq_write".to_owned(), 95.0), ("readdir".to_owned(), 1.0)]);
        let ganesha = Figures::from([("seq_write".to_owned(), 80.0), ("readdir".to_owned(), 2.0)]);
        report.add_side(Side::Cairn, &cairn);
        report.add_side(Side::Ganesha, &ganesha);
        let lines = report.lines();
        let seq_write = lines.iter().find(|l| l.row.key == "seq_write").expect("row");
        assert_eq!(seq_write.pass, Some(true));
        let readdir = lines.iter().find(|l| l.row.key == "readdir").expect("row");
        assert_eq!(readdir.ratio, Some(2.0));
        assert_eq!(readdir.pass, Some(true));
        let json_text = report.to_json("cairn-bench");
        assert!(json::parse(&json_text).is_ok(), "{json_text}");
    }
}
