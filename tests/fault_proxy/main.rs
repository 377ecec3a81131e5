//! `fault-proxy`: the tests' fault-injecting upstream as a standalone program, to put in
//! front of a real registry (for benchmarks and game days):
//!   cargo run --release --example fault-proxy -- --listen 127.0.0.1:6000 --backend http://127.0.0.1:5000 --fault /blobs/=reset:1048576
//! Modes: status:CODE, hang, delay:MS, hang-mid:BYTES, reset:BYTES, truncate:BYTES, corrupt, wrong-digest, drip:BYTES:MS.

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
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--listen", Some(v)) => listen = v,
            ("--backend", Some(v)) => backend = Some(v),
            ("--fault", Some(v)) => match parse_fault(&v) {
                Ok(fault) => faults.push(fault),
                Err(e) => {
                    eprintln!("fault-proxy: --fault {v}: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!(
                    "usage: fault-proxy --backend URL [--listen ADDR] [--fault PATH=MODE]..."
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
    std::future::pending::<()>().await;
}
