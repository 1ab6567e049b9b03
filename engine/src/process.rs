//! Child processes that cannot outlive their stage.
//!
//! A stage's command runs in a process group of its own. When the command
//! ends, whatever it left running in that group (`cmd &`, a daemon that did
//! not change its group) is killed, so nothing goes on writing into the
//! workspace after the stage is over. If pipe itself dies first, by any
//! signal, SIGKILL included, a small guard process kills the group: the guard
//! waits on a pipe whose only writer is pipe, so it wakes when pipe's file
//! descriptors close, which the kernel does however pipe ends. The guard runs
//! in its own group and ignores the signals a terminal sends, so a Ctrl-C or
//! a `kill` of pipe's group does not take it down before it has done its job.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

/// What a group's guard does once pipe is gone: kill the group named by its first argument.
const KILL_GROUP: &str = "kill -9 -\"$1\" 2>/dev/null";

/// Runs `command` to completion in its own process group (see the module
/// docs) and returns its exit status.
pub fn status_in_group(command: &mut Command) -> io::Result<ExitStatus> {
    let mut child = spawn_in_group(command)?;
    let pgid = child.id() as libc::pid_t;
    let mut guard = match spawn_guard(KILL_GROUP, &[&pgid.to_string()]) {
        Ok(guard) => guard,
        Err(e) => {
            kill_group(pgid);
            child.wait()?;
            return Err(e);
        }
    };
    let waited = wait_without_reaping(pgid);
    // The leader is a zombie until reaped, so its id (the group's id) cannot
    // be reused yet: killing the group here cannot hit anyone else's.
    kill_group(pgid);
    // The group is gone: stop the guard before it acts (SIGKILL cannot be trapped).
    let _ = guard.kill();
    let _ = guard.wait();
    let status = child.wait()?;
    waited.map(|()| status)
}

/// Spawns `command` as the leader of a new process group; it is also sent
/// SIGKILL if the thread that started it dies.
fn spawn_in_group(command: &mut Command) -> io::Result<Child> {
    // SAFETY: setpgid and prctl are async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command.spawn()
}

/// Starts a guard that runs the shell command `action` (with `args` as `$1`,
/// `$2`, ...) as soon as pipe ends, however it ends (see the module docs).
/// pipe keeps the write end of the guard's stdin; SIGKILL the guard to call it off.
pub fn spawn_guard(action: &str, args: &[&str]) -> io::Result<Child> {
    let mut guard = Command::new("sh");
    guard
        .arg("-c")
        .arg(format!("trap '' INT TERM HUP QUIT; read -r _; {action}"))
        .arg("pipe-guard")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setpgid is async-signal-safe and touches no memory of the parent.
    unsafe {
        guard.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    guard.spawn()
}

/// Waits until process `pid` has exited, leaving it a zombie (not reaped).
fn wait_without_reaping(pid: libc::pid_t) -> io::Result<()> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends SIGKILL to every process of group `pgid`.
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill has no memory effects; a group that is already gone is fine.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_background_child_does_not_outlive_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ticks");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "(while true; do echo x >> '{}'; sleep 0.05; done) & sleep 0.3",
                out.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = status_in_group(&mut command).unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(200));
        let len = fs_err::metadata(&out).unwrap().len();
        assert!(len > 0, "the background loop ran while the command did");
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            fs_err::metadata(&out).unwrap().len(),
            len,
            "nothing was written {:?} after the command ended",
            start.elapsed()
        );
    }

    #[test]
    fn the_exit_status_is_the_commands() {
        let status = status_in_group(Command::new("sh").arg("-c").arg("exit 3")).unwrap();
        assert_eq!(status.code(), Some(3));
    }
}
