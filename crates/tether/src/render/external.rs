//! Running a renderer program (kustomize, helm, tether's own Jsonnet evaluation) under
//! limits: a timeout, a memory limit, a clean environment, a cap on output, and a cap on
//! how many run at once and on the memory they may take together.
//!
//! # Security
//! The program sees only PATH and a private HOME/cache folder: no cloud or Git credentials
//! of the tether process, no KUBECONFIG. Its output is read up to a limit and then it is
//! killed; the resident memory of its whole process group is read from `/proc` every
//! [`MEMORY_POLL`] and past [`Limits::memory_bytes`] the group is killed, so a hostile
//! chart cannot exhaust the agent's memory. A render starts only when its memory limit
//! fits in what is left of the process's budget ([`set_memory_budget`]), so renders
//! running at once never take more than the budget between them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::size::show_size;

/// Limits for one run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub max_output_bytes: usize,
    /// The most resident memory the program and its children may use together.
    pub memory_bytes: u64,
}

/// A render's memory limit unless one is given: several times what large public charts
/// take (`helm template` of a chart made by `helm create`: 47 MiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;

/// The memory all renders running at once may take together, unless set otherwise.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;

/// How often a running program's memory is read.
pub const MEMORY_POLL: Duration = Duration::from_millis(50);

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(90),
            max_output_bytes: 64 * 1024 * 1024,
            memory_bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// Renderer processes running at once in this process.
const MAX_CONCURRENT: usize = 4;

/// What the running renders hold: how many, and their memory limits added up; and the
/// line of renders waiting for a slot (served in order, so a render whose limit needs
/// much of the budget is not passed over by smaller ones for ever).
struct Running {
    count: usize,
    memory: u64,
    budget: u64,
    /// The ticket the next render to wait takes, and the ticket served next.
    next: u64,
    serving: u64,
}

static RUNNING: Mutex<Running> = Mutex::new(Running {
    count: 0,
    memory: 0,
    budget: DEFAULT_MEMORY_BUDGET,
    next: 0,
    serving: 0,
});
static FREED: Condvar = Condvar::new();

/// Sets the memory that renders running at once may take together (the agent's
/// `--render-memory-budget`); a render whose limit does not fit waits for others to end.
pub fn set_memory_budget(bytes: u64) {
    RUNNING.lock().expect("not poisoned").budget = bytes;
    FREED.notify_all();
}

/// The memory budget of renders running at once.
pub fn memory_budget() -> u64 {
    RUNNING.lock().expect("not poisoned").budget
}

/// The smallest memory limit a render may have: less than any renderer needs to start.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;

/// A render's memory limit as a user writes it (`512Mi`), at least [`MIN_MEMORY_BYTES`].
pub fn parse_memory_limit(text: &str) -> Result<u64, String> {
    let bytes = crate::size::parse_size(text)?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!(
            "{text:?} is below {}, too little for any renderer to start",
            show_size(MIN_MEMORY_BYTES)
        ));
    }
    Ok(bytes)
}

/// A render's place among those running: its memory limit counts against the budget
/// until it is dropped.
struct Slot {
    memory: u64,
}

impl Slot {
    /// Waits for the render's turn (in order of arrival) and for its limit to fit.
    fn take(memory: u64) -> Result<Self, String> {
        let too_big = |budget: u64| {
            format!(
                "the render's memory limit of {} is above the {} that all renders may take together; lower it or raise --render-memory-budget",
                show_size(memory),
                show_size(budget)
            )
        };
        let mut running = RUNNING.lock().expect("not poisoned");
        if memory > running.budget {
            return Err(too_big(running.budget));
        }
        let ticket = running.next;
        running.next += 1;
        while running.serving != ticket
            || running.count >= MAX_CONCURRENT
            || running.memory + memory > running.budget
        {
            if running.serving == ticket && memory > running.budget {
                // The budget was lowered while this render waited.
                running.serving += 1;
                FREED.notify_all();
                return Err(too_big(running.budget));
            }
            running = FREED.wait(running).expect("not poisoned");
        }
        running.serving += 1;
        running.count += 1;
        running.memory += memory;
        // The next in line may fit too.
        FREED.notify_all();
        Ok(Slot { memory })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().expect("not poisoned");
        running.count -= 1;
        running.memory -= self.memory;
        FREED.notify_all();
    }
}

/// Why a program was stopped before it ended.
enum Stopped {
    Timeout,
    /// Over its memory limit, with the resident memory seen.
    Memory(u64),
}

/// Kills what is left of a process group: the program and every child it started (once
/// the program ended, the children it left behind). A group with no process left is no
/// error.
fn kill_group(group: u32) {
    if let Some(pid) = i32::try_from(group)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The resident memory of process group `group`, added up over its processes (0 where
/// `/proc` cannot be read).
pub fn group_memory(group: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, parent, process group, …
        let in_group = stat
            .rsplit_once(')')
            .and_then(|(_, fields)| fields.split_whitespace().nth(2))
            .and_then(|g| g.parse::<u32>().ok())
            == Some(group);
        if in_group {
            total += resident_memory(pid);
        }
    }
    total
}

/// `VmRSS` of one process, in bytes.
fn resident_memory(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Counts process starts, so tests and benchmarks can prove a cache hit started none.
pub static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs `program args` in `cwd` and returns its stdout; `Err` has the reason, with the
/// program's own message (trimmed) when it failed.
pub fn run(
    program: &Path,
    args: &[String],
    cwd: &Path,
    home: &Path,
    limits: &Limits,
) -> Result<Vec<u8>, String> {
    let _slot = Slot::take(limits.memory_bytes)?;
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = command(program, args, cwd, home)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cap = limits.max_output_bytes;
    let (out_reader, err_reader) = read_pipes(&mut child, cap);
    let status = watch(&mut child, limits).map_err(|e| format!("{name}: {e}"))?;
    let output = out_reader
        .join()
        .map_err(|_| format!("{name}: reading its output failed"))?;
    let errors = err_reader.join().unwrap_or_default();
    let status = status.map_err(|stopped| stopped_message(&name, stopped, limits))?;
    let output = output.map_err(|e| format!("{name}: {e}"))?;
    if output.len() > cap {
        return Err(format!(
            "{name} printed more than {cap} bytes; refusing the output"
        ));
    }
    if !status.success() {
        // Paths in the private copy mean nothing to the user: make them repository paths.
        let message = trim_message(&errors).replace(&format!("{}/", cwd.display()), "");
        return Err(format!("{name} failed: {message}"));
    }
    Ok(output)
}

/// The command that runs `program args` in `cwd`: a clean environment whose home and
/// caches are under `home`, no kubeconfig, no stdin, and a process group of its own.
fn command(program: &Path, args: &[String], cwd: &Path, home: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("HELM_CACHE_HOME", home.join("helm-cache"))
        .env("HELM_CONFIG_HOME", home.join("helm-config"))
        .env("HELM_DATA_HOME", home.join("helm-data"))
        .env("KUBECONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A group of its own, so a timeout ends the program's children too (helm plugins,
    // a shell wrapper's `sleep`), not just the program.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

/// The threads reading a child's stdout and its stderr.
type Readers = (
    std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
    std::thread::JoinHandle<Vec<u8>>,
);

/// Threads reading the child's stdout (up to `cap` bytes and one more) and stderr (64 KiB).
fn read_pipes(child: &mut std::process::Child, cap: usize) -> Readers {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        // Past the cap the pipe is closed: the program's next write fails and it stops.
        (&mut stdout)
            .take(cap as u64 + 1)
            .read_to_end(&mut buffer)
            .map(|_| buffer)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buffer);
        buffer
    });
    (out_reader, err_reader)
}

/// Why the program `name` was killed, and what to do about it.
fn stopped_message(name: &str, stopped: Stopped, limits: &Limits) -> String {
    match stopped {
        Stopped::Timeout => format!(
            "{name} did not finish within {} s and was killed",
            limits.timeout.as_secs()
        ),
        Stopped::Memory(seen) => format!(
            "{name} was killed at {} of memory, past the render's limit of {}; if it needs more, raise the limit (an Application's spec.render.memoryLimit, or --render-memory)",
            show_size(seen),
            show_size(limits.memory_bytes)
        ),
    }
}

/// Waits for `child` to end, killing its group at the time or memory limit; what the
/// program left running when it ended is killed too, so that nothing outlives the render
/// (nor holds its output pipe open).
fn watch(
    child: &mut std::process::Child,
    limits: &Limits,
) -> std::io::Result<Result<std::process::ExitStatus, Stopped>> {
    let group = child.id();
    let deadline = Instant::now() + limits.timeout;
    let mut next_look = Instant::now();
    let stopped = loop {
        if let Some(status) = child.try_wait()? {
            kill_group(group);
            return Ok(Ok(status));
        }
        let now = Instant::now();
        if now >= deadline {
            break Stopped::Timeout;
        }
        if now >= next_look {
            let used = group_memory(group);
            if used > limits.memory_bytes {
                break Stopped::Memory(used);
            }
            next_look = now + MEMORY_POLL;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The leader is not reaped yet, so its id still names this group.
    kill_group(group);
    let _ = child.kill();
    let _ = child.wait();
    Ok(Err(stopped))
}

/// The tool's own error, without noise: last lines, at most 1,000 characters.
fn trim_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
    if tail.chars().count() > 1000 {
        format!("{}…", tail.chars().take(1000).collect::<String>())
    } else if tail.is_empty() {
        "(no message)".to_string()
    } else {
        tail
    }
}

/// Finds a program: the explicit path, else `env_var`, else PATH, else where the project's
/// testenv builds it (`$TETHER_CACHE_DIR`, else `$XDG_CACHE_HOME/tether`, else
/// `~/.cache/tether`, then `bin/<name>-<version>/<name>`, the newest version). The error
/// names every place it looked.
pub fn locate(explicit: Option<&Path>, env_var: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
    {
        return Ok(found);
    }
    let built = testenv_bin().map(|bin| bin.join(format!("{name}-*")).join(name));
    if let Some(found) = testenv_bin().and_then(|bin| newest_built(&bin, name)) {
        return Ok(found);
    }
    Err(format!(
        "{name} is not installed: looked in PATH ({}){}; put it on PATH, set {env_var}, pass --{name}-bin, or build it with `python3 testenv/testenv.py build {name}`",
        if path.is_empty() {
            "empty".to_string()
        } else {
            path.to_string_lossy().into_owned()
        },
        built
            .map(|b| format!(" and {}", b.display()))
            .unwrap_or_default()
    ))
}

/// Where testenv keeps the programs it builds.
fn testenv_bin() -> Option<PathBuf> {
    let root = match std::env::var_os("TETHER_CACHE_DIR").filter(|p| !p.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
            Some(cache) => PathBuf::from(cache).join("tether"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/tether"),
        },
    };
    Some(root.join("bin"))
}

/// `bin/<name>-v1.2.3/<name>` with the highest version.
fn newest_built(bin: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}-");
    let version = |folder: &str| -> Vec<u64> {
        folder
            .trim_start_matches(&prefix)
            .trim_start_matches('v')
            .split(['.', '-'])
            .map(|part| part.parse().unwrap_or(0))
            .collect()
    };
    std::fs::read_dir(bin)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|folder| folder.starts_with(&prefix))
        .filter(|folder| bin.join(folder).join(name).is_file())
        .max_by_key(|folder| version(folder))
        .map(|folder| bin.join(folder).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, limits: &Limits) -> Result<Vec<u8>, String> {
        let home = tempfile::tempdir().expect("home");
        run(
            Path::new("/bin/sh"),
            &["-c".to_string(), script.to_string()],
            home.path(),
            home.path(),
            limits,
        )
    }

    #[test]
    fn the_newest_program_testenv_built_is_found() {
        let bin = tempfile::tempdir().expect("temp");
        for version in ["v5.8.2", "v5.10.0", "v5.9.1"] {
            let folder = bin.path().join(format!("kustomize-{version}"));
            std::fs::create_dir_all(&folder).expect("mkdir");
            std::fs::write(folder.join("kustomize"), "").expect("write");
        }
        // A folder without the program is not a candidate.
        std::fs::create_dir_all(bin.path().join("kustomize-v9.0.0")).expect("mkdir");
        assert_eq!(
            newest_built(bin.path(), "kustomize"),
            Some(bin.path().join("kustomize-v5.10.0/kustomize"))
        );
        assert_eq!(newest_built(bin.path(), "helm"), None);
    }

    #[test]
    fn a_hanging_renderer_is_killed_at_the_timeout() {
        let limits = Limits {
            timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let started = Instant::now();
        let err = sh("sleep 30", &limits).expect_err("hangs");
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_is_capped_and_errors_are_the_tools_own() {
        let limits = Limits {
            max_output_bytes: 1000,
            ..Default::default()
        };
        let err = sh("yes", &limits).expect_err("too much, and it never stops by itself");
        assert!(err.contains("more than 1000 bytes"), "{err}");
        let err = sh(
            "echo 'Error: chart not found' >&2; exit 1",
            &Limits::default(),
        )
        .expect_err("fails");
        assert!(err.ends_with("failed: Error: chart not found"), "{err}");
    }

    #[test]
    fn the_environment_is_clean() {
        let out = sh("env", &Limits::default()).expect("runs");
        let env = String::from_utf8_lossy(&out);
        assert!(
            !env.contains("CARGO_PKG_NAME"),
            "inherited variables leak: {env}"
        );
        assert!(env.contains("KUBECONFIG=/dev/null"), "{env}");
    }

    #[test]
    fn renders_wait_their_turn_until_their_memory_fits_the_budget() {
        set_memory_budget(1 << 30);
        let first = Slot::take(600 << 20).expect("fits");
        let (started, ran) = std::sync::mpsc::channel();
        let second = std::thread::spawn(move || {
            let slot = Slot::take(600 << 20).expect("fits once the first ends");
            started.send(()).expect("the test waits");
            drop(slot);
        });
        assert!(
            ran.recv_timeout(Duration::from_millis(300)).is_err(),
            "two renders of 600 MiB ran at once under a budget of 1 GiB"
        );
        drop(first);
        ran.recv_timeout(Duration::from_secs(10))
            .expect("the second runs once the first ends");
        second.join().expect("no panic");
        let refused = Slot::take(2 << 30).err().expect("above the budget");
        assert!(refused.contains("above the 1 GiB"), "{refused}");
    }

    #[test]
    fn what_a_program_leaves_running_ends_with_it() {
        // A child left in the background holds the output pipe open: without the group
        // killed when the program ends, the render would wait for it.
        let started = Instant::now();
        let output = sh("sleep 30 & echo done", &Limits::default()).expect("runs");
        assert_eq!(String::from_utf8_lossy(&output).trim(), "done");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the render waited {:?} for the program's child",
            started.elapsed()
        );
    }
}
