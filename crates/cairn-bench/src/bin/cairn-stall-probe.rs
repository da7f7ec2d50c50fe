//! `cairn-stall-probe`: the application whose stalls `cairn-bench vip` measures. It runs inside
//! the nfsvm guest, on a file of the NFS mount, and does what a careful application does: 4 KiB
//! `O_DIRECT` writes, each read back at once and checked, one after the other, forever. Each
//! operation waits for the server (no page cache), so a server that stops answering stops the
//! probe, and the time between two completed operations is the stall the application sees.
//!
//! It prints, on stdout (one line each, flushed at once; nfsvm streams them to the host):
//! - `gap MS OP`: an operation completed MS milliseconds after the previous one, when MS is at
//!   least `--threshold-ms` (the stall that ended with this completion);
//! - `tick OPS MAX_MS`: once a second, the operations so far and the longest gap of that second;
//! - `error OP MESSAGE`: an operation failed (the application saw an error); it retries after
//!   100 ms;
//! - `mismatch BLOCK`: a block read back is not what was last written there;
//! - `done ops=N errors=N mismatches=N verified=N` at the end.
//!
//! It ends when the host writes `stop` on the control connection (or closes it): it then reads
//! every block once more and checks it against what it wrote last, prints `done`, and exits 0
//! only if there was no error and no mismatch. Time is the guest's monotonic clock; only
//! differences of it are printed, so the host's and guest's clocks never need to agree.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;

/// One block, aligned as `O_DIRECT` needs.
#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

struct Options {
    file: String,
    blocks: u64,
    threshold: Duration,
    control: String,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        file: String::new(),
        blocks: 1024,
        threshold: Duration::from_millis(50),
        control: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--file" => options.file = value,
            "--control" => options.control = value,
            "--blocks" => {
                options.blocks = value.parse().map_err(|_| format!("--blocks: not a number: {value}"))?
            }
            "--threshold-ms" => {
                let ms: u64 = value.parse().map_err(|_| format!("--threshold-ms: not a number: {value}"))?;
                options.threshold = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.file.is_empty() || options.control.is_empty() || options.blocks == 0 {
        return Err(
            "usage: cairn-stall-probe --file PATH --control HOST:PORT [--blocks N] [--threshold-ms MS]"
                .to_owned(),
        );
    }
    Ok(options)
}

/// What block `index` holds after write number `sequence`: both numbers, then a pattern made
/// of them, so a stale, misplaced or torn block never passes.
fn fill(block: &mut Block, sequence: u64, index: u64) {
    block.0[..8].copy_from_slice(&sequence.to_le_bytes());
    block.0[8..16].copy_from_slice(&index.to_le_bytes());
    let seed = sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index;
    for (i, byte) in block.0[16..].iter_mut().enumerate() {
        *byte = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The host reads stdout; nothing useful can be done if it is gone.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The host's control connection: `stop` (or end of stream) asks the probe to finish.
struct Control(TcpStream);

impl Control {
    fn connect(address: &str) -> Result<Self, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect(address) {
                Ok(stream) => {
                    stream.set_nonblocking(true).map_err(|e| format!("control: {e}"))?;
                    return Ok(Self(stream));
                }
                Err(error) if Instant::now() > deadline => return Err(format!("control {address}: {error}")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn stop_requested(&mut self) -> bool {
        let mut buffer = [0u8; 64];
        match self.0.read(&mut buffer) {
            Ok(0) => true,
            Ok(n) => String::from_utf8_lossy(&buffer[..n]).contains("stop"),
            Err(error) if error.kind() == ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}

struct Probe {
    file: File,
    threshold: Duration,
    last_completion: Instant,
    tick_max: Duration,
    ops: u64,
    errors: u64,
    mismatches: u64,
}

impl Probe {
    /// Accounts for one finished operation; true when it succeeded.
    fn completed(&mut self, op: &str, result: std::io::Result<()>) -> bool {
        match result {
            Ok(()) => {
                let now = Instant::now();
                let gap = now - self.last_completion;
                self.last_completion = now;
                self.tick_max = self.tick_max.max(gap);
                self.ops += 1;
                if gap >= self.threshold {
                    say(&format!("gap {:.1} {op}", gap.as_secs_f64() * 1000.0));
                }
                true
            }
            Err(error) => {
                self.errors += 1;
                say(&format!("error {op} {error}"));
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        }
    }

    fn write_block(&mut self, block: &Block, index: u64) -> bool {
        let result = self.file.write_all_at(&block.0, index * BLOCK as u64);
        self.completed("write", result)
    }

    /// Reads block `index` and checks it holds write number `sequence`.
    fn check_block(&mut self, buffer: &mut Block, expected: &Block, index: u64) -> bool {
        let result = self.file.read_exact_at(&mut buffer.0, index * BLOCK as u64);
        if !self.completed("read", result) {
            return false;
        }
        if buffer.0 != expected.0 {
            self.mismatches += 1;
            say(&format!("mismatch {index}"));
        }
        true
    }
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("cairn-stall-probe: {message}");
            return ExitCode::from(2);
        }
    };
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&options.file)
    {
        Ok(file) => file,
        Err(error) => {
            eprintln!("cairn-stall-probe: opening {}: {error}", options.file);
            return ExitCode::FAILURE;
        }
    };
    let mut control = match Control::connect(&options.control) {
        Ok(control) => control,
        Err(message) => {
            eprintln!("cairn-stall-probe: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut probe = Probe {
        file,
        threshold: options.threshold,
        last_completion: Instant::now(),
        tick_max: Duration::ZERO,
        ops: 0,
        errors: 0,
        mismatches: 0,
    };
    // The sequence number last written to each block (0: never written).
    let mut written = vec![0u64; options.blocks as usize];
    let mut block = Box::new(Block([0; BLOCK]));
    let mut buffer = Box::new(Block([0; BLOCK]));
    let mut sequence = 0u64;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    say("probe started");
    loop {
        sequence += 1;
        let index = sequence % options.blocks;
        fill(&mut block, sequence, index);
        // A failed write is retried until it succeeds, so the block's content is known.
        while !probe.write_block(&block, index) {}
        written[index as usize] = sequence;
        while !probe.check_block(&mut buffer, &block, index) {}
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + Duration::from_secs(1);
            say(&format!("tick {} {:.1}", probe.ops, probe.tick_max.as_secs_f64() * 1000.0));
            probe.tick_max = Duration::ZERO;
            if control.stop_requested() {
                break;
            }
        }
    }
    // Every block, once more, against what was written last.
    let mut verified = 0u64;
    for (index, last) in written.iter().enumerate() {
        if *last == 0 {
            continue;
        }
        fill(&mut block, *last, index as u64);
        while !probe.check_block(&mut buffer, &block, index as u64) {}
        verified += 1;
    }
    say(&format!(
        "done ops={} errors={} mismatches={} verified={verified}",
        probe.ops, probe.errors, probe.mismatches
    ));
    if probe.errors == 0 && probe.mismatches == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
