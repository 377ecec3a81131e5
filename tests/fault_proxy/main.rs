//! `fault-proxy`: the tests' fault-injecting upstream as a standalone program, to put in
//! front of a real registry (for benchmarks and game days):
//!   cargo run --release --example fault-proxy -- --listen 127.0.0.1:6000 --backend http://127.0.0.1:5000 --fault /blobs/=reset:1048576
//! Modes: status:CODE, retry-after:CODE:SECONDS, hang, delay:MS, hang-mid:BYTES, reset:BYTES,
//! truncate:BYTES, corrupt, flip:OFFSET, wrong-digest, drip:BYTES:MS. With `--fault-file F` the faults are re-read from F
//! (one PATH=MODE per line, or the line `refused` to stop listening) whenever it changes.

#[allow(dead_code)]
#[path = "../support/fake_registry.rs"]
mod fake_registry;

use fake_registry::{FakeRegistry, Fault};
use std::time::Duration;

fn parse_fault(spec: &str) -> Result<(String, Fault), String> {
    let (path, mode) = spec.split_once('=').ok_or("expected PATH=MODE")?;
    let mut parts = mode.split(':');
    let kind = parts.next().unwrap_or("");
    let mut number = || -> Result<u64, String> {
        parts
            .next()
            .ok_or(format!("{kind} needs a number"))?
            .parse()
            .map_err(|e| format!("{kind}: {e}"))
    };
    let fault = match kind {
        "status" => Fault::Status(number()? as u16),
        "retry-after" => {
            let status = number()? as u16;
            Fault::RetryAfter {
                status,
                seconds: number()?,
            }
        }
        "hang" => Fault::HangBeforeHeaders,
        "delay" => Fault::DelayHeaders(Duration::from_millis(number()?)),
        "hang-mid" => Fault::HangMidBody {
            after: number()? as usize,
        },
        "reset" => Fault::ResetMidBody {
            after: number()? as usize,
        },
        "truncate" => Fault::Truncate {
            after: number()? as usize,
        },
        "corrupt" => Fault::Corrupt,
        "flip" => Fault::FlipByte {
            at: number()? as usize,
        },
        "wrong-digest" => Fault::WrongDigestHeader,
        "drip" => {
            let chunk = number()? as usize;
            Fault::Drip {
                chunk,
                delay: Duration::from_millis(number()?),
            }
        }
        other => return Err(format!("unknown fault mode {other:?}")),
    };
    Ok((path.to_owned(), fault))
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:6000".to_owned();
    let mut backend = None;
    let mut faults = Vec::new();
    let mut fault_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--listen", Some(v)) => listen = v,
            ("--backend", Some(v)) => backend = Some(v),
            ("--fault-file", Some(v)) => fault_file = Some(std::path::PathBuf::from(v)),
            ("--fault", Some(v)) => match parse_fault(&v) {
                Ok(fault) => faults.push(fault),
                Err(e) => {
                    eprintln!("fault-proxy: --fault {v}: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!(
                    "usage: fault-proxy --backend URL [--listen ADDR] [--fault PATH=MODE]... [--fault-file F]"
                );
                std::process::exit(2);
            }
        }
    }
    let Some(backend) = backend else {
        eprintln!("fault-proxy: --backend URL is required");
        std::process::exit(2);
    };
    let proxy = FakeRegistry::start_proxy(&listen, &backend).await;
    for (path, fault) in faults {
        proxy.fault(&path, fault);
    }
    println!("fault-proxy listening on {} -> {backend}", proxy.url());
    match fault_file {
        Some(path) => follow_fault_file(proxy, &path, &backend).await,
        None => std::future::pending::<()>().await,
    }
}

/// Applies the faults in `path` whenever its contents change (checked every 50 ms), forever.
/// `refused` closes the listener and every connection; the next other contents reopen it on
/// the same address.
async fn follow_fault_file(mut proxy: FakeRegistry, path: &std::path::Path, backend: &str) {
    let listen = proxy.addr.to_string();
    let mut applied = String::new();
    let mut listening = true;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(contents) = std::fs::read_to_string(path) else {
            continue;
        };
        if contents == applied {
            continue;
        }
        applied = contents.clone();
        let refused = contents.lines().any(|l| l.trim() == "refused");
        if refused {
            if listening {
                proxy.stop();
                listening = false;
            }
            println!("fault-proxy: refusing connections");
            continue;
        }
        if !listening {
            proxy = FakeRegistry::start_proxy(&listen, backend).await;
            listening = true;
        }
        proxy.clear_faults();
        for line in contents.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match parse_fault(line) {
                Ok((path, fault)) => proxy.fault(&path, fault),
                Err(e) => eprintln!("fault-proxy: ignoring fault line {line:?}: {e}"),
            }
        }
        println!("fault-proxy: faults now {:?}", contents.trim());
    }
}
