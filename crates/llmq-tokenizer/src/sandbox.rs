//! A chat template runs in a forked child process with an address-space limit, so a
//! template that builds an enormous string (doubling it in a loop takes 40 steps to
//! reach a terabyte, far below any instruction budget) fails with a clear error instead
//! of aborting the process on allocation. The child renders, sends its result through
//! a pipe and exits; the parent reads at most the output limit, waits at most
//! [`DEADLINE`], and kills the child past it (a child that inherited a lock held by
//! another thread at fork time can only hang, never corrupt the parent).

use std::io::Read;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Memory the child may add to the parent's address space.
pub const MEMORY_LIMIT: u64 = 1 << 30;
/// Wall-clock time a render may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Run `f` in a forked child under the limits; `Err` is the reason it did not finish.
pub fn run(
    f: impl FnOnce() -> Result<String, String>,
    max_output: usize,
) -> Result<String, String> {
    let vm_now = address_space_bytes().ok_or("cannot read /proc/self/statm")?;
    let mut fds = [0i32; 2];
    // SAFETY: plain syscalls on our own descriptors; the child only renders, writes to
    // the pipe and leaves with `_exit`.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err("cannot create a pipe for the template sandbox".into());
        }
        let pid = libc::fork();
        if pid < 0 {
            libc::close(fds[0]);
            libc::close(fds[1]);
            return Err("cannot fork the template sandbox".into());
        }
        if pid == 0 {
            libc::close(fds[0]);
            std::panic::set_hook(Box::new(|_| {}));
            let lim = vm_now + MEMORY_LIMIT;
            let rl = libc::rlimit {
                rlim_cur: lim,
                rlim_max: lim,
            };
            libc::setrlimit(libc::RLIMIT_AS, &rl);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err("the template renderer panicked".into()));
            let (tag, body) = match &out {
                Ok(s) => (b'0', s.as_bytes()),
                Err(e) => (b'1', e.as_bytes()),
            };
            let mut ok = write_all(fds[1], &[tag]);
            ok = ok && write_all(fds[1], body);
            libc::_exit(if ok { 0 } else { 2 });
        }
        libc::close(fds[1]);
        let mut pipe = std::fs::File::from_raw_fd(fds[0]);
        let result = read_limited(&mut pipe, max_output + 1, pid);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        let bytes = result?;
        if libc::WIFSIGNALED(status) {
            return Err(format!(
                "it exceeded its memory limit of {} MB (the renderer was stopped by signal {})",
                MEMORY_LIMIT >> 20,
                libc::WTERMSIG(status)
            ));
        }
        match bytes.split_first() {
            Some((b'0', body)) if body.len() <= max_output => {
                String::from_utf8(body.to_vec()).map_err(|_| "its output is not UTF-8".into())
            }
            Some((b'0', _)) => Err(format!("its output grew past {max_output} bytes")),
            Some((_, msg)) => Err(String::from_utf8_lossy(msg).into_owned()),
            None => Err("the renderer ended without an answer".into()),
        }
    }
}

/// Read up to `cap` bytes until EOF, killing `pid` when [`DEADLINE`] passes.
fn read_limited(pipe: &mut std::fs::File, cap: usize, pid: libc::pid_t) -> Result<Vec<u8>, String> {
    use std::os::fd::AsRawFd;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1 << 16];
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r == 0 || left.is_zero() {
            // SAFETY: our own child
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(format!("it ran past {} s", DEADLINE.as_secs()));
        }
        match pipe.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > cap {
                    // SAFETY: our own child
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return Ok(out);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the renderer's answer failed: {e}")),
        }
    }
}

unsafe fn write_all(fd: i32, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        let n = libc::write(fd, b.as_ptr().cast(), b.len());
        if n <= 0 {
            return false;
        }
        b = &b[n as usize..];
    }
    true
}

/// The process's virtual memory size in bytes.
fn address_space_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}
