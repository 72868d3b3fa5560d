//! The workspace's server binaries, for tests that run them as processes.
//!
//! Cargo builds a package's own binaries for its integration tests, not
//! other packages' ones. Tests that start the coordinator or the services
//! as real processes call [`service_binaries`], which builds them once per
//! test process — same profile, same target folder — and says where they are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The packages whose binaries [`service_binaries`] builds.
pub const SERVICE_PACKAGES: [&str; 4] = ["coordinator", "order-srv", "stock-srv", "order-api"];

/// Builds the coordinator, order-srv, stock-srv and order-api binaries (once
/// per test process) and returns their folder, `target/<profile>`.
pub fn service_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(workspace).arg("build").arg("--bins");
        without_package_env(&mut command);
        for package in SERVICE_PACKAGES {
            command.args(["-p", package]);
        }
        if dir.file_name().is_some_and(|name| name == "release") {
            command.arg("--release");
        }
        let output = command.output().map_err(|e| format!("cannot run cargo: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    });
    if let Err(err) = built {
        panic!(
            "cannot build the service binaries; run \
             `cargo build --bins -p coordinator -p order-srv -p stock-srv -p order-api` first:\n{err}"
        );
    }
    dir
}

/// Removes from `command` the variables cargo sets for the running test
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …), so that the nested `cargo
/// build` sees the environment a user's cargo would. Build scripts declare
/// some of these with `rerun-if-env-changed` (ring's does), and cargo
/// compares them against its own environment: inherited from a test of
/// package X, they would make it rebuild ring and everything above it
/// (rustls, reqwest, tonic's TLS…) once per package whose tests start the
/// services, and the next `cargo test` rebuild them back.
fn without_package_env(command: &mut Command) {
    const SET_FOR_TESTS: [&str; 8] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if SET_FOR_TESTS.contains(&name)
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
        {
            command.env_remove(name);
        }
    }
}

/// The folder holding the workspace's binaries, for tools that start them
/// as processes (`quickorder-bench`, `quickorder-chaos`): by default the
/// folder of the running executable, which `cargo build --bins` fills with
/// all of them.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `target/release`, `target/debug`, or a folder given on the command line.
    dir: PathBuf,
}

impl Binaries {
    /// `dir`, or the folder of the running executable.
    pub fn locate(dir: Option<&Path>) -> Result<Binaries, String> {
        let dir = match dir {
            Some(dir) => dir.to_path_buf(),
            None => {
                let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
                exe.parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| format!("{} has no folder", exe.display()))?
            }
        };
        Ok(Binaries { dir })
    }

    /// The folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of binary `name`, or an error saying how to build it.
    pub fn path(&self, name: &str) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "`{name}` is not in {} (the service binaries must sit next to this tool, or pass --bin-dir); \
                 build them first: cargo build --release --bins",
                self.dir.display()
            ))
        }
    }
}
