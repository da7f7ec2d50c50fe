//! The coord benchmark's figures, ratios, targets, and its table / JSON output.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::cluster::System;
use crate::json;
use crate::report::{format_value, median, now_utc};

pub const SET_1: &str = "set_1";
pub const SET_MANY: &str = "set_many";
pub const GET_1: &str = "get_1";
pub const GET_MANY: &str = "get_many";
pub const BLOCKED: &str = "blocked";
pub const SET_1_P50: &str = "set_1_p50";
pub const SET_MANY_P99: &str = "set_many_p99";
pub const CPU_PER_SET: &str = "cpu_per_set";
pub const CLIENT_CPU_PER_SET: &str = "client_cpu_per_set";
pub const CPU_PER_GET: &str = "cpu_per_get";
pub const CLIENT_CPU_PER_GET: &str = "client_cpu_per_get";
pub const DISK_PER_SET: &str = "disk_per_set";

struct Row {
    key: &'static str,
    /// `{n}` stands for the number of concurrent clients.
    label: &'static str,
    unit: &'static str,
    lower_is_better: bool,
    /// Cairn must be at least as good as ZooKeeper (ratio >= 1.0); otherwise context only.
    target: bool,
}

const ROWS: &[Row] = &[
    Row { key: SET_1, label: "set 1 KiB, 1 client", unit: "ops/s", lower_is_better: false, target: true },
    Row {
        key: SET_MANY,
        label: "set 1 KiB, {n} clients",
        unit: "ops/s",
        lower_is_better: false,
        target: true,
    },
    Row { key: GET_1, label: "get 1 KiB, 1 client", unit: "ops/s", lower_is_better: false, target: false },
    Row {
        key: GET_MANY,
        label: "get 1 KiB, {n} clients",
        unit: "ops/s",
        lower_is_better: false,
        target: false,
    },
    Row {
        key: BLOCKED,
        label: "writes blocked by leader kill -9 (median)",
        unit: "s",
        lower_is_better: true,
        target: true,
    },
    Row {
        key: SET_1_P50,
        label: "set latency p50, 1 client",
        unit: "ms",
        lower_is_better: true,
        target: false,
    },
    Row {
        key: SET_MANY_P99,
        label: "set latency p99, {n} clients",
        unit: "ms",
        lower_is_better: true,
        target: false,
    },
    Row {
        key: CPU_PER_SET,
        label: "server CPU per set, {n} clients (3 members)",
        unit: "us",
        lower_is_better: true,
        target: false,
    },
    Row {
        key: CLIENT_CPU_PER_SET,
        label: "client CPU per set, {n} clients",
        unit: "us",
        lower_is_better: true,
        target: false,
    },
    Row {
        key: CPU_PER_GET,
        label: "server CPU per get, {n} clients (3 members)",
        unit: "us",
        lower_is_better: true,
        target: false,
    },
    Row {
        key: CLIENT_CPU_PER_GET,
        label: "client CPU per get, {n} clients",
        unit: "us",
        lower_is_better: true,
        target: false,
    },
    Row {
        key: DISK_PER_SET,
        label: "disk written per set, {n} clients (3 members)",
        unit: "KiB",
        lower_is_better: true,
        target: false,
    },
];

/// One system's figures: a list of values per key (several for the leader kills).
pub type Figures = BTreeMap<&'static str, Vec<f64>>;

pub struct CoordReport {
    seconds: u64,
    clients: usize,
    runs: usize,
    busy_cpus: Vec<f64>,
    failures: Vec<String>,
    systems: BTreeMap<System, Figures>,
    /// Notes printed under the table (where the failover client was connected, ...).
    notes: Vec<String>,
}

struct Line {
    row: &'static Row,
    cairn: Option<f64>,
    zookeeper: Option<f64>,
    /// Cairn's figure over ZooKeeper's, turned round for lower-is-better rows: > 1 is Cairn ahead.
    ratio: Option<f64>,
    pass: Option<bool>,
}

impl CoordReport {
    pub fn new(seconds: u64, clients: usize, runs: usize) -> Self {
        Self {
            seconds,
            clients,
            runs,
            busy_cpus: Vec::new(),
            failures: Vec::new(),
            systems: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn add_busy_cpus(&mut self, busy: f64) {
        self.busy_cpus.push(busy);
    }

    pub fn add_failure(&mut self, message: String) {
        self.failures.push(message);
    }

    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    pub fn add_note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub fn add_system(&mut self, system: System, figures: Figures) {
        self.systems.insert(system, figures);
    }

    fn values(&self, system: System, key: &str) -> &[f64] {
        self.systems.get(&system).and_then(|f| f.get(key)).map_or(&[], Vec::as_slice)
    }

    fn label(&self, row: &Row) -> String {
        row.label.replace("{n}", &self.clients.to_string())
    }

    fn lines(&self) -> Vec<Line> {
        ROWS.iter()
            .map(|row| {
                let cairn = median(self.values(System::Cairn, row.key));
                let zookeeper = median(self.values(System::ZooKeeper, row.key));
                let ratio = match (cairn, zookeeper) {
                    (Some(c), Some(z)) if row.lower_is_better && c > 0.0 => Some(z / c),
                    (Some(c), Some(z)) if !row.lower_is_better && z > 0.0 => Some(c / z),
                    _ => None,
                };
                let pass = if row.target { ratio.map(|r| r >= 1.0) } else { None };
                Line { row, cairn, zookeeper, ratio, pass }
            })
            .collect()
    }

    fn target_text(row: &Row) -> &'static str {
        match (row.target, row.lower_is_better) {
            (false, _) => "",
            (true, false) => ">= zookeeper",
            (true, true) => "<= zookeeper",
        }
    }

    pub fn to_table(&self, command: &str) -> String {
        let mut out = String::new();
        let _ =
            writeln!(out, "\nCairn coord vs Apache ZooKeeper 3.8, 3 members each on loopback, {}", now_utc());
        let _ = writeln!(out, "command: {command}");
        let _ = writeln!(
            out,
            "throughput tests {} s each, {} concurrent clients, {} leader kill(s) per system, medians\n",
            self.seconds, self.clients, self.runs
        );
        let _ = writeln!(
            out,
            "{:<46} {:<6} {:>9} {:>9} {:>8}  {:<14} result",
            "test", "unit", "cairn", "zookeeper", "ratio", "target"
        );
        let lines = self.lines();
        for line in &lines {
            let ratio = line.ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
            let result = match line.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None if line.row.target => "-",
                None => "",
            };
            let _ = writeln!(
                out,
                "{:<46} {:<6} {:>9} {:>9} {:>8}  {:<14} {result}",
                self.label(line.row),
                line.row.unit,
                format_value(line.cairn, line.row.unit),
                format_value(line.zookeeper, line.row.unit),
                ratio,
                Self::target_text(line.row)
            );
        }
        let _ = writeln!(out);
        for system in [System::Cairn, System::ZooKeeper] {
            let blocked = self.values(system, BLOCKED);
            if !blocked.is_empty() {
                let each: Vec<String> = blocked.iter().map(|v| format!("{v:.3}")).collect();
                let _ = writeln!(out, "blocked per leader kill, {}: {} s", system.name(), each.join(", "));
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let busy = self.busy_cpus.iter().copied().fold(0.0, f64::max);
        if busy > 0.25 {
            let _ = writeln!(
                out,
                "note: the machine was busy (up to {busy:.2} CPUs used elsewhere when a system started); \
                 figures are noisy"
            );
        }
        for failure in &self.failures {
            let _ = writeln!(out, "FAILED {failure}");
        }
        let judged: Vec<bool> = lines.iter().filter_map(|l| l.pass).collect();
        let _ = writeln!(
            out,
            "\nratio = Cairn / ZooKeeper for rates, ZooKeeper / Cairn for times (> 1: Cairn ahead); \
             targets met: {} of {}",
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
                "{{\"seconds\": {}, \"clients\": {}, \"runs\": {}, \"value_bytes\": 1024}}",
                self.seconds, self.clients, self.runs
            ),
        );
        let _ = writeln!(out, "  \"cpus_busy_elsewhere\": {},", list(&self.busy_cpus));
        let notes: Vec<String> = self.notes.iter().map(|n| json::quote(n)).collect();
        let _ = writeln!(out, "  \"notes\": [{}],", notes.join(", "));
        let failures: Vec<String> = self.failures.iter().map(|f| json::quote(f)).collect();
        let _ = writeln!(out, "  \"failures\": [{}],", failures.join(", "));
        let results: Vec<String> = self
            .lines()
            .iter()
            .map(|line| {
                format!(
                    "    {{\"test\": {}, \"label\": {}, \"unit\": {}, \"cairn\": {}, \"zookeeper\": {}, \
                     \"ratio\": {}, \"target\": {}, \"pass\": {}, \"cairn_runs\": {}, \"zookeeper_runs\": {}}}",
                    json::quote(line.row.key),
                    json::quote(&self.label(line.row)),
                    json::quote(line.row.unit),
                    optional(line.cairn),
                    optional(line.zookeeper),
                    optional(line.ratio),
                    json::quote(Self::target_text(line.row)),
                    line.pass.map_or("null", |p| if p { "true" } else { "false" }),
                    list(self.values(System::Cairn, line.row.key)),
                    list(self.values(System::ZooKeeper, line.row.key)),
                )
            })
            .collect();
        let _ = writeln!(out, "  \"results\": [\n{}\n  ]", results.join(",\n"));
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let mut report = CoordReport::new(10, 64, 3);
        report.add_system(
            System::Cairn,
            Figures::from([(SET_MANY, vec![2000.0]), (BLOCKED, vec![0.5, 0.9, 0.7]), (GET_1, vec![100.0])]),
        );
        report.add_system(
            System::ZooKeeper,
            Figures::from([(SET_MANY, vec![4000.0]), (BLOCKED, vec![1.4]), (GET_1, vec![50.0])]),
        );
        let lines = report.lines();
        let find = |key: &str| lines.iter().find(|l| l.row.key == key).expect("row");
        assert_eq!(find(SET_MANY).ratio, Some(0.5));
        assert_eq!(find(SET_MANY).pass, Some(false));
        assert_eq!(find(BLOCKED).cairn, Some(0.7));
        assert_eq!(find(BLOCKED).ratio, Some(2.0));
        assert_eq!(find(BLOCKED).pass, Some(true));
        assert_eq!(find(GET_1).pass, None);
        assert_eq!(find(SET_1).ratio, None);
        let table = report.to_table("cairn-bench coord");
        assert!(table.contains("set 1 KiB, 64 clients"), "{table}");
        assert!(table.contains("targets met: 1 of 2"), "{table}");
        let json_text = report.to_json("cairn-bench coord");
        assert!(json::parse(&json_text).is_ok(), "{json_text}");
    }
}
