//! `delay-line`: scripts/fleet-lab's latency and outage line for one shaped link (the kernel here
//! has no `netem`). It creates a TUN device, and every IP packet routed into it is written back
//! after `--delay-ms`, or dropped silently while the link is down (a flapping schedule, or the
//! mode in a control file it polls). std + libc only; TUNSETIFF is issued by hand.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: delay-line --tun NAME [--delay-ms MS] [--flap DOWN_S:PERIOD_S]
                  [--control FILE] [--queue-limit PACKETS] [--stats-every S]
  Packets routed into the TUN device NAME come back out of it MS milliseconds later.
  --flap DOWN_S:PERIOD_S  drop every packet during the first DOWN_S seconds of every PERIOD_S
                          seconds (counted from the start, or from when the control file set it).
  --control FILE          re-read every 100 ms: `pass`, `drop` or `flap DOWN_S PERIOD_S`,
                          then optionally `at EPOCH_S` (the flap's phase starts at that
                          wall-clock time) and `delay MS`.";

/// `_IOW('T', 202, int)` from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pass,
    Drop,
    /// Down during the first `down` of every `period`, counted from `since`.
    Flap {
        down: Duration,
        period: Duration,
        since: Instant,
    },
}

impl Mode {
    fn dropping(&self, now: Instant) -> bool {
        match *self {
            Mode::Pass => false,
            Mode::Drop => true,
            Mode::Flap {
                down,
                period,
                since,
            } => {
                let period = period.as_nanos().max(1);
                // Before `since` the schedule runs backwards from it, so phase is still periodic.
                let phase = match now.checked_duration_since(since) {
                    Some(after) => after.as_nanos() % period,
                    None => (period - (since - now).as_nanos() % period) % period,
                };
                phase < down.as_nanos()
            }
        }
    }
}

struct Options {
    tun: String,
    delay: Duration,
    mode: Mode,
    control: Option<String>,
    queue_limit: usize,
    stats_every: Option<Duration>,
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("not a number of seconds: {text}"))
}

fn flap(down: &str, period: &str, since: Instant) -> Result<Mode, String> {
    let (down, period) = (seconds(down)?, seconds(period)?);
    if period.is_zero() {
        return Err("the flap period must be positive".into());
    }
    Ok(Mode::Flap {
        down,
        period,
        since,
    })
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        tun: String::new(),
        delay: Duration::ZERO,
        mode: Mode::Pass,
        control: None,
        queue_limit: 65_536,
        stats_every: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tun" => options.tun = value,
            "--delay-ms" => options.delay = seconds(&value)? / 1000,
            "--flap" => {
                let (down, period) = value
                    .split_once(':')
                    .ok_or("--flap takes DOWN_S:PERIOD_S")?;
                options.mode = flap(down, period, Instant::now())?;
            }
            "--control" => options.control = Some(value),
            "--queue-limit" => {
                options.queue_limit = value
                    .parse()
                    .map_err(|_| format!("bad --queue-limit {value}"))?
            }
            "--stats-every" => options.stats_every = Some(seconds(&value)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if options.tun.is_empty() || options.tun.len() > 15 {
        return Err("--tun NAME (1 to 15 bytes) is required".into());
    }
    Ok(options)
}

/// Parses a control file: `pass`, `drop` or `flap DOWN_S PERIOD_S`, then optionally `at EPOCH_S`
/// (the flap's phase counts from that wall-clock time, so a script can line it up with a run
/// instead of with this program's 100 ms poll) and `delay MS`. A flap keeps its phase while the
/// file's text is unchanged (the caller only re-parses changes).
fn parse_control(text: &str, now: Instant) -> Result<(Mode, Option<Duration>), String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (mut mode, mut rest) = match words.as_slice() {
        ["pass", rest @ ..] => (Mode::Pass, rest),
        ["drop", rest @ ..] => (Mode::Drop, rest),
        ["flap", down, period, rest @ ..] => (flap(down, period, now)?, rest),
        _ => return Err(format!("bad control text {text:?}")),
    };
    let mut delay = None;
    while let [key, value, tail @ ..] = rest {
        match *key {
            "delay" => delay = Some(seconds(value)? / 1000),
            "at" => {
                let Mode::Flap { since, .. } = &mut mode else {
                    return Err("`at` only goes with `flap`".into());
                };
                let at = std::time::UNIX_EPOCH + seconds(value)?;
                let wall = std::time::SystemTime::now();
                *since = match at.duration_since(wall) {
                    Ok(ahead) => now + ahead,
                    Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
                };
            }
            _ => return Err(format!("bad control text {text:?}")),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(format!("bad control text {text:?}"));
    }
    Ok((mode, delay))
}

fn open_tun(name: &str) -> io::Result<File> {
    // SAFETY: a NUL-terminated path literal; the returned descriptor is checked before use.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; File closes it on drop.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut request = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which IfReq lays out (40 bytes).
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Waits until the TUN device is readable or `timeout` passes.
fn wait_readable(file: &File, timeout: Duration) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so a packet due in 0.3 ms is not polled for in a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(1000) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pollfd, 1, ms) } < 0 {
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    passed: u64,
    dropped_down: u64,
    dropped_full: u64,
    write_errors: u64,
}

fn run(options: Options) -> io::Result<()> {
    let mut tun = open_tun(&options.tun)?;
    let (mut mode, mut delay) = (options.mode, options.delay);
    let mut control_text = String::new();
    let mut next_control = Instant::now();
    let mut next_stats = options.stats_every.map(|every| Instant::now() + every);
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut counters = Counters::default();
    let mut buf = vec![0u8; 65_536];
    eprintln!(
        "delay-line: {} up, delay {:?}, mode {mode:?}",
        options.tun, delay
    );
    loop {
        let now = Instant::now();
        if let Some(path) = options.control.as_deref().filter(|_| now >= next_control) {
            next_control = now + Duration::from_millis(100);
            // A missing or unreadable control file leaves the mode as it is.
            if let Ok(text) = std::fs::read_to_string(path)
                && text != control_text
            {
                match parse_control(&text, now) {
                    Ok((new_mode, new_delay)) => {
                        mode = new_mode;
                        delay = new_delay.unwrap_or(delay);
                        eprintln!("delay-line: mode {mode:?}, delay {delay:?}");
                    }
                    Err(error) => eprintln!("delay-line: {error}"),
                }
                control_text = text;
            }
        }
        loop {
            match tun.read(&mut buf) {
                Ok(0) => break,
                Ok(_) if mode.dropping(now) => counters.dropped_down += 1,
                Ok(_) if queue.len() >= options.queue_limit => counters.dropped_full += 1,
                Ok(n) => queue.push_back((now + delay, buf[..n].to_vec())),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        let now = Instant::now();
        while let Some((due, _)) = queue.front() {
            if *due > now {
                break;
            }
            if let Some((_, packet)) = queue.pop_front() {
                // A TUN write takes the whole packet or fails: there is no partial write.
                match tun.write(&packet) {
                    Ok(n) if n == packet.len() => counters.passed += 1,
                    Ok(_) | Err(_) => counters.write_errors += 1,
                }
            }
        }
        if let Some(at) = next_stats.filter(|at| now >= *at) {
            next_stats = options.stats_every.map(|every| at + every);
            eprintln!(
                "delay-line: passed {} dropped(down) {} dropped(queue full) {} write errors {} queued {}",
                counters.passed,
                counters.dropped_down,
                counters.dropped_full,
                counters.write_errors,
                queue.len()
            );
        }
        let mut timeout = Duration::from_millis(100);
        if let Some((due, _)) = queue.front() {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        if !timeout.is_zero() {
            wait_readable(&tun, timeout)?;
        }
    }
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("delay-line: {error}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(options) {
        eprintln!("delay-line: {error}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flap_drops_the_first_seconds_of_every_period() {
        let start = Instant::now();
        let mode = flap("5", "10", start).unwrap();
        assert!(mode.dropping(start));
        assert!(mode.dropping(start + Duration::from_millis(4_900)));
        assert!(!mode.dropping(start + Duration::from_millis(5_100)));
        assert!(mode.dropping(start + Duration::from_millis(10_100)));
    }

    #[test]
    fn control_text_sets_mode_and_delay() {
        let now = Instant::now();
        assert_eq!(parse_control("pass\n", now).unwrap(), (Mode::Pass, None));
        assert_eq!(
            parse_control("drop delay 7", now).unwrap(),
            (Mode::Drop, Some(Duration::from_millis(7)))
        );
        assert!(parse_control("flap 5", now).is_err());
        assert!(parse_control("drop at 5", now).is_err());
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let (mode, _) = parse_control(&format!("flap 5 10 at {}", epoch + 2.0), now).unwrap();
        // Two seconds before the phase starts, the schedule is 8 s into its previous period: up.
        assert!(!mode.dropping(now));
        assert!(mode.dropping(now + Duration::from_millis(2_100)));
    }
}
