//! Memory shares: how many bytes each service may use on this node, MapR style. The operating
//! system's share (`service.command.os.heapsize.*`) is reserved first; each service then gets
//! `max(min, min(max, rest * percent / 100))` of the rest. The supervisor passes the result to
//! the service and enforces it with a memory cgroup (see [`crate::cgroup`]).
//!
//! The arithmetic is pure (the total is passed in) so it can be tested for any machine size.

use std::collections::BTreeMap;

use crate::conf::{ConfDir, HeapSpec};

/// Bytes in one MB of the configuration files (`heapsize.max`, `heapsize.min`).
pub const MB: u64 = 1024 * 1024;

/// Where the kernel reports the machine's memory.
const MEMINFO_PATH: &str = "/proc/meminfo";

/// The machine's memory (`MemTotal` in /proc/meminfo), in bytes.
pub fn total_memory_bytes() -> std::io::Result<u64> {
    let text = std::fs::read_to_string(MEMINFO_PATH)?;
    parse_mem_total(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no `MemTotal: <n> kB` line in {MEMINFO_PATH}"),
        )
    })
}

/// `MemTotal:       16318480 kB` in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

/// A service's share of `total` bytes: `max(min, min(max, total * percent / 100))`.
///
/// Without a percent only the bounds apply: the max when set (raised to the min if the min is
/// larger), else the min. `None` when nothing is set. When min > max, min wins, as the formula
/// says. Results saturate instead of overflowing.
pub fn heap_bytes(spec: &HeapSpec, total: u64) -> Option<u64> {
    let max = spec.max_mb.map(mb_to_bytes);
    let min = spec.min_mb.map(mb_to_bytes);
    let share = match spec.percent {
        Some(percent) => percent_of(total, percent),
        None => max.or(min)?,
    };
    let capped = max.map_or(share, |max| share.min(max));
    Some(min.map_or(capped, |min| capped.max(min)))
}

/// The operating system's reservation out of `total` bytes (0 when `os_heap` sets nothing).
pub fn os_reserved_bytes(conf: &ConfDir, total: u64) -> u64 {
    heap_bytes(&conf.warden.os_heap, total).unwrap_or(0)
}

/// The share in bytes of each of `services` that has a memory setting (in `warden.conf` or its
/// plugin file; see [`ConfDir::heap_spec`]); services without one are absent from the map. The
/// operating system's share is taken off `total` first and percentages apply to what is left.
///
/// Shares are not scaled down when they add up to more than the rest: the operator's
/// percentages say what they want, and the supervisor may warn about overcommit.
pub fn allocate(conf: &ConfDir, services: &[String], total: u64) -> BTreeMap<String, u64> {
    let rest = total.saturating_sub(os_reserved_bytes(conf, total));
    services
        .iter()
        .filter_map(|service| {
            let spec = conf.heap_spec(service)?;
            Some((service.clone(), heap_bytes(&spec, rest)?))
        })
        .collect()
}

fn mb_to_bytes(mb: u64) -> u64 {
    mb.saturating_mul(MB)
}

/// `total * percent / 100`, rounded down. Percent is within 0..=100 by the configuration's
/// invariant; it is clamped anyway so a hand-built spec cannot produce more than `total`.
fn percent_of(total: u64, percent: f64) -> u64 {
    let percent = if percent.is_nan() { 0.0 } else { percent.clamp(0.0, 100.0) };
    // Work in hundredths of a percent with integers so large totals keep every byte.
    let basis_points = (percent * 100.0).round() as u128;
    let bytes = u128::from(total) * basis_points / 10_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::{PluggableService, WardenConf, parse_service_conf};

    const GIB: u64 = 1024 * MB;

    fn spec(percent: Option<f64>, max_mb: Option<u64>, min_mb: Option<u64>) -> HeapSpec {
        HeapSpec { percent, max_mb, min_mb }
    }

    #[test]
    fn formula_with_all_fields() {
        // 10% of 16 GiB is 1.6 GiB: within [256 MB, 4096 MB].
        assert_eq!(heap_bytes(&spec(Some(10.0), Some(4096), Some(256)), 16 * GIB), Some(16 * GIB / 10));
        // Capped by max.
        assert_eq!(heap_bytes(&spec(Some(50.0), Some(1024), Some(256)), 16 * GIB), Some(GIB));
        // Raised to min.
        assert_eq!(heap_bytes(&spec(Some(1.0), Some(4096), Some(256)), GIB), Some(256 * MB));
    }

    #[test]
    fn min_greater_than_max_gives_min() {
        assert_eq!(heap_bytes(&spec(Some(50.0), Some(100), Some(200)), 16 * GIB), Some(200 * MB));
        assert_eq!(heap_bytes(&spec(None, Some(100), Some(200)), 16 * GIB), Some(200 * MB));
    }

    #[test]
    fn percent_edges() {
        assert_eq!(heap_bytes(&spec(Some(0.0), None, None), 16 * GIB), Some(0));
        assert_eq!(heap_bytes(&spec(Some(0.0), None, Some(64)), 16 * GIB), Some(64 * MB));
        assert_eq!(heap_bytes(&spec(Some(100.0), None, None), 16 * GIB), Some(16 * GIB));
        assert_eq!(heap_bytes(&spec(Some(100.0), None, None), u64::MAX), Some(u64::MAX));
        assert_eq!(heap_bytes(&spec(Some(12.5), None, None), 1000), Some(125));
        assert_eq!(heap_bytes(&spec(Some(250.0), None, None), 1000), Some(1000), "clamped to 100%");
    }

    #[test]
    fn missing_fields() {
        assert_eq!(heap_bytes(&HeapSpec::default(), 16 * GIB), None);
        assert_eq!(heap_bytes(&spec(None, Some(512), None), 16 * GIB), Some(512 * MB));
        assert_eq!(heap_bytes(&spec(None, None, Some(128)), 16 * GIB), Some(128 * MB));
        assert_eq!(heap_bytes(&spec(Some(10.0), None, None), 1000), Some(100));
    }

    #[test]
    fn mb_to_bytes_and_saturation() {
        assert_eq!(heap_bytes(&spec(None, Some(1), None), 0), Some(1_048_576));
        assert_eq!(heap_bytes(&spec(None, Some(u64::MAX), None), 0), Some(u64::MAX));
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemFree:  10 kB\nMemTotal:       16318480 kB\nSwapTotal: 0 kB\n";
        assert_eq!(parse_mem_total(text), Some(16_318_480 * 1024));
        assert_eq!(parse_mem_total("MemTotal: 12\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
        assert_eq!(parse_mem_total(""), None);
        let total = total_memory_bytes().unwrap();
        assert!(total > 16 * MB, "this machine reports {total} bytes");
    }

    fn conf_dir(warden: WardenConf, plugins: Vec<PluggableService>) -> ConfDir {
        let plugins = plugins.into_iter().map(|p| (p.triplet.service.clone(), p)).collect();
        ConfDir { warden, plugins }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allocate_reserves_the_os_share_first() {
        let mut warden =
            WardenConf { os_heap: spec(Some(10.0), Some(4096), Some(256)), ..WardenConf::default() };
        warden.heaps.insert("cldb".into(), spec(Some(50.0), None, None));
        warden.heaps.insert("nfs".into(), spec(None, Some(100), None));
        let plugin =
            parse_service_conf("web", "services=web\nservice.command=w\nservice.heapsize.percent=25")
                .unwrap();
        let conf = conf_dir(warden, vec![plugin]);
        let total = 10 * GIB;
        let rest = total - GIB; // 10% of 10 GiB, within [256 MB, 4096 MB]
        let shares = allocate(&conf, &names(&["cldb", "nfs", "web", "coord"]), total);
        let expected: BTreeMap<String, u64> =
            [("cldb".to_string(), rest / 2), ("nfs".to_string(), 100 * MB), ("web".to_string(), rest / 4)]
                .into_iter()
                .collect();
        assert_eq!(shares, expected);
        assert_eq!(os_reserved_bytes(&conf, total), GIB);
    }

    #[test]
    fn allocate_saturates_when_the_os_share_exceeds_total() {
        let mut warden = WardenConf { os_heap: spec(None, None, Some(4096)), ..WardenConf::default() };
        warden.heaps.insert("cldb".into(), spec(Some(50.0), None, None));
        warden.heaps.insert("coord".into(), spec(Some(50.0), None, Some(64)));
        let conf = conf_dir(warden, Vec::new());
        let shares = allocate(&conf, &names(&["cldb", "coord"]), GIB);
        assert_eq!(shares.get("cldb"), Some(&0));
        assert_eq!(shares.get("coord"), Some(&(64 * MB)));
    }

    #[test]
    fn allocate_without_os_share_uses_the_whole_total() {
        let mut warden = WardenConf::default();
        warden.heaps.insert("cldb".into(), spec(Some(50.0), None, None));
        let conf = conf_dir(warden, Vec::new());
        assert_eq!(allocate(&conf, &names(&["cldb"]), 1000).get("cldb"), Some(&500));
        assert!(allocate(&conf, &[], 1000).is_empty());
    }
}
