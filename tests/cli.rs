//! The `ferry` binary itself: help and version, `check-config`, exit code 2 with every
//! problem listed before anything binds, and a clean exit on SIGTERM.

use crate::support::stdout_of_success;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

#[test]
fn version_and_help_describe_the_contract() {
    let out = ferry().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = ferry().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--upstream",
        "--cache-dir",
        "--tag-ttl",
        "127.0.0.1:5000",
        "registry-1.docker.io",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        "tag_ttl = \"5m\"\n[[upstream]]\nurl = \"https://a.example\"\nusername = \"u\"\npassword = \"topsecret\"\n",
    )
    .unwrap();
    let out = ferry()
        .args(["check-config", "--config"])
        .arg(&path)
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--upstream",
            "https://b.example",
        ])
        .output()
        .unwrap();
    let printed = stdout_of_success(&out);
    assert!(printed.contains("tag_ttl = \"5m\""), "{printed}");
    // Flags replace the file's upstreams, in the order given.
    let first = printed.find("127.0.0.1:9").expect("first upstream");
    let second = printed.find("b.example").expect("second upstream");
    assert!(first < second);
    assert!(!printed.contains("a.example"));
    assert!(!printed.contains("topsecret"));

    let shipped = ferry()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/ferry.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        shipped.status.success(),
        "deploy/ferry.toml is invalid: {}",
        String::from_utf8_lossy(&shipped.stderr)
    );
}

#[test]
fn invalid_configuration_exits_2_listing_every_problem_before_binding() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "tag_ttl = \"soon\"\n[[upstream]]\nurl = \"ftp://x\"\n",
    )
    .unwrap();
    let out = ferry()
        .args(["serve", "--config"])
        .arg(&path)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--cache-dir"])
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tag_ttl = \"soon\""), "{stderr}");
    assert!(stderr.contains("upstream[0].url = \"ftp://x\""), "{stderr}");
    assert!(
        !dir.path().join("cache").exists(),
        "nothing may be created for an invalid config"
    );

    let out = ferry()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen = \"not-an-address\""));
}

#[test]
fn serve_answers_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = ferry()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
            "--cache-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        assert!(
            Instant::now() < deadline,
            "ferry did not report its address"
        );
        let line = lines.next().expect("ferry exited early").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("docker-distribution-api-version: registry/2.0")
    );

    // SIGHUP (systemctl reload) must not stop it.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut stream = std::net::TcpStream::connect(&addr).expect("still serving after SIGHUP");
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_config_shows_auth_files_but_never_a_credential_helpers_command() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "ci:hunter2\n").unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            "auth_users_file = \"{}\"\n[[upstream]]\nurl = \"https://a.example\"\nusername = \"u\"\npassword_command = \"get-token --secret=s3cr3t-arg\"\n",
            users.display()
        ),
    )
    .unwrap();
    let out = ferry()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let printed = stdout_of_success(&out);
    assert!(
        printed.contains(&format!("auth_users_file = \"{}\"", users.display())),
        "{printed}"
    );
    assert!(!printed.contains("s3cr3t-arg"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("password_command = \"<set, not shown>\""),
        "{printed}"
    );
}

#[test]
fn upstream_groups_on_the_command_line_and_in_the_file() {
    let out = ferry()
        .args([
            "check-config",
            "--upstream-group",
            "az=http://az-a:5000,http://az-b:5000",
            "--upstream",
            "https://registry.example",
        ])
        .output()
        .unwrap();
    let printed = stdout_of_success(&out);
    let tables: Vec<&str> = printed.split("[[upstream]]").skip(1).collect();
    assert_eq!(tables.len(), 3, "{printed}");
    assert!(tables[0].contains("az-a") && tables[0].contains("group = \"az\""));
    assert!(tables[1].contains("az-b") && tables[1].contains("group = \"az\""));
    assert!(tables[2].contains("registry.example") && !tables[2].contains("group"));

    // A group split by another upstream is refused, as is a malformed one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.toml");
    std::fs::write(
        &path,
        "[[upstream]]\nurl = \"http://a\"\ngroup = \"az\"\n\
         [[upstream]]\nurl = \"http://b\"\n\
         [[upstream]]\nurl = \"http://c\"\ngroup = \"az\"\n",
    )
    .unwrap();
    let out = ferry()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be consecutive"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ferry()
        .args(["check-config", "--upstream-group", "just-a-name"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME=URL"));
}

/// A second ferry on the same host finds the admin port taken: the message names the admin
/// listener and the setting that moves it, and prints the OS error once.
#[test]
fn a_taken_admin_port_is_named_with_the_flag_that_moves_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = ferry()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            &admin,
            "--upstream",
            "http://127.0.0.1:9",
            "--cache-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {admin} for the admin API")),
        "{stderr}"
    );
    assert!(stderr.contains("--admin-listen"), "{stderr}");
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
}

/// Secrets never reach a message: credentials in an upstream URL are refused without being
/// shown (flag or file), and a TOML error (a misspelt or wrong-typed key) names the line and
/// column, not the value (issue 19, item 8).
#[test]
fn config_errors_never_print_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[upstream]]\nurl = \"https://bob:SECRET-ONE@r.example\"\n",
            "SECRET-ONE",
            "credentials",
        ),
        (
            "[[upstream]]\nurl = \"https://r.example\"\nusername = \"bob\"\npasword = \"SECRET-TWO\"\n",
            "SECRET-TWO",
            "line 4",
        ),
        (
            "[[upstream]]\nurl = \"https://r.example\"\nusername = \"bob\"\npassword = 987654321\n",
            "987654321",
            "line 4",
        ),
    ];
    for (i, (text, secret, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("ferry{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = ferry()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "case {i}");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !printed.contains(secret),
            "case {i} printed its secret: {printed}"
        );
        assert!(printed.contains(says), "case {i}: {printed}");
    }
    let out = ferry()
        .args([
            "check-config",
            "--upstream",
            "https://bob:SECRET-FLAG@r.example",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let printed = String::from_utf8_lossy(&out.stderr);
    assert!(!printed.contains("SECRET-FLAG"), "{printed}");
    assert!(printed.contains("***@r.example"), "{printed}");
}

/// A proxy from the environment never carries a guarded request (issue 19, item 5): with
/// `direct_registries = ["*"]` and HTTPS_PROXY set, a request for a direct registry does not
/// reach the proxy (before, the proxy got `CONNECT <name>:443` for any name a client chose),
/// while a configured upstream still goes through it (the operator's choice).
#[test]
fn a_proxy_in_the_environment_never_carries_a_guarded_request() {
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.set_nonblocking(true).unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "direct_registries = [\"*\"]\n[[upstream]]\nurl = \"http://configured.example.invalid\"\n",
    )
    .unwrap();
    let mut child = ferry()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .env("HTTPS_PROXY", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _stop = KillOnDrop(child);
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("ferry exited early").unwrap();
        if line.contains("ferry listening") {
            break line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
        }
    };
    let get = move |path: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    };
    let accepted = |proxy: &std::net::TcpListener| {
        let mut count = 0;
        while proxy.accept().is_ok() {
            count += 1;
        }
        count
    };
    let direct = get("/v2/metadata.google.internal/x/manifests/v1");
    assert!(!direct.starts_with("HTTP/1.1 200"), "{direct}");
    assert_eq!(accepted(&proxy), 0, "a guarded request went to the proxy");
    // The proxy never answers: only whether ferry connects to it matters.
    std::thread::spawn(move || get("/v2/library/app/manifests/v1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted(&proxy) == 0 {
        assert!(
            Instant::now() < deadline,
            "a configured upstream ignored the proxy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a child process when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
