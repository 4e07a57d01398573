//! The log's writer thread: lines are appended to one bounded buffer by whichever thread logs,
//! and written to stderr by one thread of their own, whatever has piled up in one `write(2)`.
//!
//! Why not write from the worker: a slow terminal, pipe or journal would hold up every
//! request on that worker, one `write(2)` per access-log line. Why not a channel of lines
//! (tracing-appender, or this module before): every line was an allocation and, with the
//! writer asleep, a wake-up; at 10,000 hits a second that was three context switches per
//! request and a third of a 1 KiB hit's cost (bench/README.md). Here a line is a copy into
//! the shared buffer under a short lock; only the first line after the writer went idle wakes
//! it, and the writer then lets lines gather for [`GATHER`] before it writes (nginx's
//! `access_log ... flush=` makes the same trade). The buffer is bounded: when it holds
//! [`QUEUED_BYTES`], a thread that logs waits for the writer (no line is dropped), and
//! [`LogWriterGuard`] writes out everything queued before the process exits.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of lines that may wait for the writer before a thread that logs waits for it (a
/// line that crosses it is still taken whole).
pub const QUEUED_BYTES: usize = 4 << 20;
/// How long the writer, once woken by a line, lets more lines gather before it writes: about
/// the most a line waits in the buffer while the log's output keeps up (plus the write of the
/// batch before it).
pub const GATHER: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Queue {
    lines: Vec<u8>,
    /// The writer is waiting for a first line (a line must wake it).
    idle: bool,
    /// Write out everything queued, then stop; lines after this are refused.
    stopping: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits on this for a first line, or for the stop.
    has_lines: Condvar,
    /// Threads that log wait on this while the buffer is full.
    has_room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A thread that panicked while holding the lock left the queue whole (appends and
        // swaps do not panic midway): keep logging.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Queues each `write` whole (one event is one `write` call: tracing's fmt layer formats the
/// whole event, then writes it once), so lines never interleave.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &*self.shared;
        let mut q = shared.lock();
        while q.lines.len() >= QUEUED_BYTES && !q.stopping {
            q = shared.has_room.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.stopping {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the log writer has stopped"));
        }
        q.lines.extend_from_slice(buf);
        let wake = std::mem::take(&mut q.idle);
        drop(q);
        if wake {
            shared.has_lines.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Stops the writer thread when dropped, after it has written every line queued before.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.has_lines.notify_one();
        self.shared.has_room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start the writer thread on `out` (stderr, for the process's log).
pub fn start(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogWriterGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new().name("hangar-log".into()).spawn(move || run(&shared, out))?
    };
    Ok((LogWriter { shared: shared.clone() }, LogWriterGuard { shared, thread: Some(thread) }))
}

/// Stops the queue if the writer thread unwinds (a panicking output): threads that log then
/// get an error instead of waiting forever for room.
struct StopOnUnwind<'a>(&'a Shared);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().stopping = true;
            self.0.has_room.notify_all();
        }
    }
}

fn run(shared: &Shared, mut out: impl Write) {
    let _stop = StopOnUnwind(shared);
    // Two buffers, swapped: loggers fill one while the other is written.
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let mut q = shared.lock();
        while q.lines.is_empty() && !q.stopping {
            q.idle = true;
            q = shared.has_lines.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.idle = false;
        if !q.stopping && q.lines.len() < QUEUED_BYTES / 4 {
            // Let the lines of the next few milliseconds join this write.
            drop(q);
            std::thread::sleep(GATHER);
            q = shared.lock();
        }
        std::mem::swap(&mut q.lines, &mut batch);
        let stop = q.stopping && batch.is_empty();
        drop(q);
        shared.has_room.notify_all();
        if stop {
            let _ = out.flush();
            return;
        }
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>,)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_queued_before_the_guard_drops_is_written_in_order() {
        let sink = Sink::default();
        let (writer, guard) = start(sink.clone()).unwrap();
        let mut expected = Vec::new();
        let mut i = 0;
        while expected.len() < 2 * QUEUED_BYTES {
            let line = format!("line {i}\n");
            (&writer).write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
            i += 1;
        }
        drop(guard);
        let written = sink.0.lock().unwrap().0.clone();
        assert!(written == expected, "every line, in order, none lost");
        assert!((&writer).write_all(b"late\n").is_err(), "after the guard, writing is an error, not a hang");
    }

    /// Hands each write to the test as it happens.
    struct Signal(std::sync::mpsc::Sender<Vec<u8>>);

    impl Write for Signal {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_written_while_the_process_runs_and_lines_that_gather_go_out_together() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (writer, guard) = start(Signal(tx)).unwrap();
        (&writer).write_all(b"first\n").unwrap();
        let wait = Duration::from_secs(10);
        assert_eq!(rx.recv_timeout(wait).unwrap(), b"first\n", "a lone line is written without the guard dropping");
        // Lines queued within one gathering window are written by one `write`.
        let before = Instant::now();
        for i in 0..100 {
            (&writer).write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        let queued_within_window = before.elapsed() < GATHER;
        let mut got = rx.recv_timeout(wait).unwrap();
        if queued_within_window {
            assert_eq!(got.iter().filter(|&&b| b == b'\n').count(), 100, "one write for the batch");
        }
        while got.iter().filter(|&&b| b == b'\n').count() < 100 {
            got.extend(rx.recv_timeout(wait).unwrap());
        }
        drop(guard);
    }
}
