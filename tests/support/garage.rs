//! A real Garage (S3-compatible distributed store) on loopback for the shared-store tests:
//! one node or a cluster, a bucket and a key made with its own CLI. No mock: `garage` is found
//! on the machine or, the first time, installed under `target/` by the tests themselves.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "ferry-test";

/// The Garage release the tests install when none is found (the one CI has run against).
const GARAGE_VERSION: &str = "2.5.0";

/// The `garage` binary: `$GARAGE_BIN`, else on `PATH`, else `~/.cargo/bin/garage`, else one
/// installed by the tests themselves under `target/` on first use (`cargo install garage
/// --locked --root ...`, 10 to 15 minutes once), so a fresh machine's `cargo test` needs
/// nothing installed by hand and still runs against a real Garage.
fn garage_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(find_or_install_garage).clone()
}

fn find_or_install_garage() -> PathBuf {
    if let Some(path) = std::env::var_os("GARAGE_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("garage"))
            .find(|candidate| candidate.is_file())
    });
    if let Some(found) = on_path {
        return found;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let in_cargo_home = PathBuf::from(home).join(".cargo/bin/garage");
        if in_cargo_home.is_file() {
            return in_cargo_home;
        }
    }
    install_garage_under_target()
}

/// `cargo install garage` into `target/tmp/garage-install` (kept between runs, so only the
/// first run pays). Says so on the terminal even though the harness captures test output.
fn install_garage_under_target() -> PathBuf {
    use std::io::Write as _;
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("garage-install");
    let binary = root.join("bin/garage");
    if binary.is_file() {
        return binary;
    }
    let _ = writeln!(
        std::io::stderr(),
        "shared-store tests: garage is not installed; building Garage {GARAGE_VERSION} once into {} \
         (cargo install garage --locked, 10-15 minutes; later runs reuse it)",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "install",
            "garage",
            "--locked",
            "--quiet",
            "--version",
            GARAGE_VERSION,
        ])
        .arg("--root")
        .arg(&root)
        .stdout(Stdio::null())
        .status()
        .expect("run cargo install garage");
    assert!(
        status.success() && binary.is_file(),
        "installing garage failed ({status}); install it by hand with `cargo install garage --locked` \
         or point GARAGE_BIN at a garage binary"
    );
    binary
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One Garage node process.
pub struct GarageNode {
    pub config: PathBuf,
    pub s3_port: u16,
    child: Option<Child>,
}

impl GarageNode {
    fn start(dir: &Path, index: usize, rpc_secret: &str, replication: usize) -> GarageNode {
        let node_dir = dir.join(format!("node{index}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let (s3_port, rpc_port) = (free_port(), free_port());
        let config = node_dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = {replication}\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{rpc_secret}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n",
                meta = node_dir.join("meta").display(),
                data = node_dir.join("data").display(),
            ),
        )
        .unwrap();
        let mut node = GarageNode {
            config,
            s3_port,
            child: None,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let binary = garage_binary();
        let log = std::fs::File::create(self.config.with_file_name("server.log")).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.s3_port)).is_err() {
            assert!(Instant::now() < deadline, "garage did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the garage CLI against this node; returns stdout, panicking on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(garage_binary())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run the garage CLI");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn node_id(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(garage_binary())
                .arg("-c")
                .arg(&self.config)
                .args(["node", "id", "-q"])
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            assert!(Instant::now() < deadline, "garage node id never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the node (SIGKILL): the store is down, or one node of a cluster is.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for GarageNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Garage cluster with one bucket and one key allowed on it.
pub struct Garage {
    pub nodes: Vec<GarageNode>,
    pub key_id: String,
    pub secret: String,
    _dir: tempfile::TempDir,
}

impl Garage {
    /// One node, replication 1.
    pub async fn start() -> Garage {
        Garage::start_cluster(1).await
    }

    /// `count` nodes in one zone each, replication `count` (every object on every node).
    pub async fn start_cluster(count: usize) -> Garage {
        let garage = tokio::task::spawn_blocking(move || Garage::set_up(count))
            .await
            .unwrap();
        garage.wait_until_writable().await;
        garage
    }

    fn set_up(count: usize) -> Garage {
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) as u8))
            .collect();
        let nodes: Vec<GarageNode> = (0..count)
            .map(|i| GarageNode::start(dir.path(), i, &secret, count))
            .collect();
        let first = &nodes[0];
        let ids: Vec<String> = nodes.iter().map(|n| n.node_id()).collect();
        for id in ids.iter().skip(1) {
            first.cli(&["node", "connect", id]);
        }
        for (i, id) in ids.iter().enumerate() {
            let node = id.split('@').next().unwrap().to_owned();
            let zone = format!("z{i}");
            first.cli(&["layout", "assign", "-z", &zone, "-c", "1G", &node]);
        }
        first.cli(&["layout", "apply", "--version", "1"]);
        first.cli(&["bucket", "create", BUCKET]);
        let key = first.cli(&["key", "create", "ferry-test-key"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|rest| rest.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {key}"))
        };
        let key_id = field("Key ID:");
        let secret_key = field("Secret key:");
        first.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "ferry-test-key",
        ]);
        Garage {
            nodes,
            key_id,
            secret: secret_key,
            _dir: dir,
        }
    }

    pub fn endpoint(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// An object_store client on node `node`, for tests that inspect or damage objects.
    pub fn client(&self, node: usize) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("garage")
            .with_endpoint(self.endpoint(node))
            .with_allow_http(true)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .build()
            .unwrap()
    }

    /// ferry's shared-store settings for this cluster, through node `node`.
    pub fn store_config(&self, node: usize, prefix: &str) -> ferry::shared::SharedStoreConfig {
        ferry::shared::SharedStoreConfig {
            url: format!("s3://{BUCKET}/{prefix}"),
            bucket: BUCKET.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: Some(self.endpoint(node)),
            region: Some("garage".to_owned()),
            access_key_id: Some(self.key_id.clone()),
            secret_access_key: Some(self.secret.clone()),
            request_timeout: Duration::from_secs(5),
            // As long as a request may take: the suite loads both cores, and these tests are
            // about the store's content, not its speed.
            answer_timeout: Duration::from_secs(5),
            blob_redirect: false,
        }
    }

    /// A fresh layout takes a moment to accept writes: wait for a test object to go in.
    async fn wait_until_writable(&self) {
        use object_store::ObjectStoreExt;
        let client = self.client(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let path = object_store::path::Path::from("ready-probe");
            match client
                .put(&path, bytes::Bytes::from_static(b"ok").into())
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "garage never took a write: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// A TCP relay in front of a Garage node that can cut connections after a number of bytes in
/// one direction: the store dying in the middle of a read or an upload, for real (the relay
/// passes the signed requests untouched).
pub struct CuttingRelay {
    pub addr: std::net::SocketAddr,
    /// Cut each new connection after this many bytes from Garage to ferry (reads).
    pub cut_downstream_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Cut each new connection after this many bytes from ferry to Garage (uploads).
    pub cut_upstream_after: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub cuts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// At a limit, hold the connection open and silent instead of cutting it (a store that
    /// stalls rather than dies).
    pub stall_instead_of_cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How many more cuts (or stalls) the limits may make (unlimited by default); once spent,
    /// a connection that reaches a limit relays everything. Counted at the cut, not at the
    /// connect, so small requests on other connections (a listing) do not use it up.
    pub cuts_left: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingRelay {
    pub async fn start(backend_port: u16) -> CuttingRelay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicU64::new(u64::MAX));
        let up = Arc::new(AtomicU64::new(u64::MAX));
        let cuts = Arc::new(AtomicU64::new(0));
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let limited = Arc::new(AtomicU64::new(u64::MAX));
        let (down_limit, up_limit, cut_count, stall_flag, limited_left) = (
            down.clone(),
            up.clone(),
            cuts.clone(),
            stall.clone(),
            limited.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (down_limit, up_limit, cut_count, stalls, cuts_left) = (
                    down_limit.load(Ordering::SeqCst),
                    up_limit.load(Ordering::SeqCst),
                    cut_count.clone(),
                    stall_flag.load(Ordering::SeqCst),
                    limited_left.clone(),
                );
                tokio::spawn(async move {
                    let Ok(server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // A stall keeps the sockets (owned by the relay futures) open and silent.
                    let stall = stalls.then(|| cut_count.clone());
                    let upload = relay(
                        client_read,
                        server_write,
                        up_limit,
                        stall.clone(),
                        cuts_left.clone(),
                    );
                    let download = relay(server_read, client_write, down_limit, stall, cuts_left);
                    let cut = tokio::select! {
                        cut = upload => cut,
                        cut = download => cut,
                    };
                    if cut {
                        cut_count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        CuttingRelay {
            addr,
            cut_downstream_after: down,
            cut_upstream_after: up,
            cuts,
            stall_instead_of_cut: stall,
            cuts_left: limited,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for CuttingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until EOF or `limit` bytes; true if it stopped at the limit (the
/// caller then drops both sockets: a cut). With `stall`, reaching the limit counts there and
/// then holds both halves open, sending nothing, for good. Once `cuts_left` is spent, the
/// limit no longer applies.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut limit: u64,
    stall: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    cuts_left: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> bool {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sent = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                // Pass the end on, and keep the other direction going until it ends too.
                let _ = to.shutdown().await;
                std::future::pending::<()>().await;
                return false;
            }
            Ok(n) => n,
        };
        let room = limit.saturating_sub(sent) as usize;
        if to.write_all(&buffer[..n.min(room)]).await.is_err() {
            return false;
        }
        sent += n.min(room) as u64;
        if sent >= limit
            && cuts_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            // No cut left: relay the rest of this read, and everything after it.
            if to.write_all(&buffer[n.min(room)..n]).await.is_err() {
                return false;
            }
            sent += (n - n.min(room)) as u64;
            limit = u64::MAX;
            continue;
        }
        if sent >= limit {
            if let Some(stalls) = &stall {
                stalls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            return true;
        }
    }
}
