//! Waiting for SIGTERM or SIGINT (Ctrl-C) so a server can stop cleanly.
//!
//! [`TerminationSignals::block`] must run before any other thread starts: threads inherit
//! the blocked mask, so the signals stay pending until [`TerminationSignals::wait`] takes
//! one, instead of killing the process wherever it is.

/// SIGTERM and SIGINT, blocked in this thread and every thread it starts from now on.
pub struct TerminationSignals {
    set: libc::sigset_t,
}

impl TerminationSignals {
    /// Blocks SIGTERM and SIGINT.
    pub fn block() -> std::io::Result<TerminationSignals> {
        // SAFETY: the set is initialised by sigemptyset before any other use, and
        // pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let code = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if code != 0 {
                return Err(std::io::Error::from_raw_os_error(code));
            }
            Ok(TerminationSignals { set })
        }
    }

    /// Waits until SIGTERM or SIGINT arrives; returns its name.
    pub fn wait(&self) -> std::io::Result<&'static str> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` was built by `block`; sigwait writes one int.
        let code = unsafe { libc::sigwait(&self.set, &mut signal) };
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(code));
        }
        Ok(if signal == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        })
    }
}
