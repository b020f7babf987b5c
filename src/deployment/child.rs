//! Protocol 1 over a child process's stdin and stdout. The child runs in its own process
//! group, its stderr appends to a log file, its stdout is read line by line on a thread (a
//! line over the cap is reported, not held), and it is ended as the protocol says: stdin
//! closed, 5 s, SIGTERM to the group, 5 s, SIGKILL, reaped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use super::protocol::{Handshake, Hello, Request, Response, excerpt, parse_response};
use super::transport::{Transport, TransportError, receive};

/// What the stdout reader saw.
enum Line {
    Text(String),
    /// A line longer than the cap (its bytes are skipped up to the next newline).
    Oversized(usize),
    /// End of stdout (the child closed it or exited).
    Closed,
}

/// A deployment run as a child process.
pub struct ChildProcess {
    argv: Vec<String>,
    stderr_log: PathBuf,
    max_line: usize,
    running: Option<Running>,
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
}

impl ChildProcess {
    /// A child to start from `argv`, stderr appended to `stderr_log`, stdout lines capped
    /// at `max_line` bytes.
    pub fn new(argv: Vec<String>, stderr_log: PathBuf, max_line: usize) -> Self {
        Self {
            argv,
            stderr_log,
            max_line,
            running: None,
        }
    }

    fn start(&mut self) -> Result<(), TransportError> {
        self.stop_child();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .map_err(|e| TransportError::Io(format!("{}: {e}", self.stderr_log.display())))?;
        let mut child = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0)
            .spawn()
            .map_err(|e| TransportError::Io(format!("cannot start '{}': {e}", self.argv[0])))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| TransportError::Io("no stdout".into()))?;
        let (tx, rx) = channel();
        let cap = self.max_line;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let line = read_capped_line(&mut reader, cap);
                let closed = matches!(line, Line::Closed);
                if tx.send(line).is_err() || closed {
                    break;
                }
            }
        });
        self.running = Some(Running {
            stdin: child.stdin.take(),
            child,
            lines: rx,
        });
        Ok(())
    }

    /// Writes one line to the child's stdin.
    fn send(&mut self, line: &str) -> Result<(), TransportError> {
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| TransportError::Io("not started".into()))?;
        let stdin = running
            .stdin
            .as_mut()
            .ok_or_else(|| TransportError::Io("stdin closed".into()))?;
        let written = stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush());
        written.map_err(|_| self.exit_error())
    }

    /// The next stdout line before `deadline`.
    fn next_line(
        &mut self,
        deadline: Instant,
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<String, TransportError> {
        let running = self
            .running
            .as_mut()
            .ok_or_else(|| TransportError::Io("not started".into()))?;
        match receive(&running.lines, deadline, stop) {
            Ok(Line::Text(text)) => Ok(text),
            Ok(Line::Oversized(n)) => Err(TransportError::Oversized(n)),
            Ok(Line::Closed) => Err(self.exit_error()),
            Err(TransportError::Timeout(_)) => Err(TransportError::Timeout(timeout)),
            Err(e) => Err(e),
        }
    }

    /// How the child ended, once it has (waits up to a second for the status).
    fn exit_error(&mut self) -> TransportError {
        let Some(running) = self.running.as_mut() else {
            return TransportError::Exited("not running".into());
        };
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            match running.child.try_wait() {
                Ok(Some(status)) => return TransportError::Exited(status.to_string()),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => return TransportError::Exited("stdout closed, still running".into()),
                Err(e) => return TransportError::Exited(e.to_string()),
            }
        }
    }

    /// Ends the child as the protocol says and reaps it.
    fn stop_child(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        drop(running.stdin.take());
        let pid = running.child.id() as i32;
        let waited = |child: &mut Child, within: Duration| {
            let until = Instant::now() + within;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return true,
                    Ok(None) if Instant::now() >= until => return false,
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        };
        if waited(&mut running.child, Duration::from_secs(5)) {
            signal_group(pid, libc::SIGTERM);
            return;
        }
        signal_group(pid, libc::SIGTERM);
        if !waited(&mut running.child, Duration::from_secs(5)) {
            signal_group(pid, libc::SIGKILL);
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// Sends `signal` to the process group `pid` leads (the child and anything it started).
fn signal_group(pid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// One line of at most `cap` bytes (without its newline).
fn read_capped_line(reader: &mut impl BufRead, cap: usize) -> Line {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(b) => b,
            Err(_) => return Line::Closed,
        };
        if buffer.is_empty() {
            return if line.is_empty() && skipped == 0 {
                Line::Closed
            } else if skipped > 0 {
                Line::Oversized(skipped)
            } else {
                Line::Text(String::from_utf8_lossy(&line).into_owned())
            };
        }
        let (chunk, ends) = match buffer.iter().position(|&b| b == b'\n') {
            Some(at) => (&buffer[..at], Some(at + 1)),
            None => (buffer, None),
        };
        if skipped == 0 && line.len() + chunk.len() <= cap {
            line.extend_from_slice(chunk);
        } else {
            skipped += line.len() + chunk.len();
            line.clear();
        }
        let used = ends.unwrap_or(buffer.len());
        reader.consume(used);
        if ends.is_some() {
            return if skipped > 0 {
                Line::Oversized(skipped)
            } else {
                Line::Text(String::from_utf8_lossy(&line).into_owned())
            };
        }
    }
}

impl Transport for ChildProcess {
    fn hello(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<Handshake, TransportError> {
        self.start()?;
        let hello = serde_json::to_string(&Hello::V1).unwrap_or_default();
        self.send(&hello)?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let line = self.next_line(deadline, stop, timeout)?;
        serde_json::from_str(&line)
            .map_err(|e| TransportError::Garbage(format!("handshake: {e} in {}", excerpt(&line))))
    }

    fn call(
        &mut self,
        request: &Request,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Response, TransportError> {
        let line = serde_json::to_string(request).map_err(|e| TransportError::Io(e.to_string()))?;
        self.send(&line)?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        loop {
            let text = self.next_line(deadline, stop, timeout)?;
            let response =
                parse_response(&text).map_err(|e| TransportError::Garbage(e.to_string()))?;
            // An answer to an earlier call that timed out: stale, discarded.
            if response.id < request.id {
                continue;
            }
            if response.id != request.id {
                return Err(TransportError::WrongId {
                    sent: request.id,
                    got: response.id,
                });
            }
            return Ok(response);
        }
    }

    fn stderr_tail(&self) -> String {
        tail_of(&self.stderr_log, 2048)
    }

    fn shutdown(&mut self) {
        self.stop_child();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop_child();
    }
}

/// The last `bytes` of a text file (from a line start where one is in reach).
pub fn tail_of(path: &std::path::Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.take(bytes).read_to_string(&mut text);
    match text.find('\n') {
        Some(at) if len > bytes => text[at + 1..].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_cap_are_reported_and_skipped() {
        let input = b"short\nthis line is too long\nok\nunterminated";
        let mut reader = BufReader::with_capacity(4, &input[..]);
        let mut seen = Vec::new();
        loop {
            match read_capped_line(&mut reader, 8) {
                Line::Text(t) => seen.push(t),
                Line::Oversized(n) => seen.push(format!("<{n}>")),
                Line::Closed => break,
            }
        }
        assert_eq!(seen, ["short", "<21>", "ok", "<12>"]);
    }
}
