//! The log's writer thread: lines are queued on a bounded channel by whichever thread logs,
//! and written to stderr by one thread of their own, with whatever has piled up in one
//! `write(2)` (up to [`BATCH_BYTES`]).
//!
//! Why not write from the worker: a slow terminal, pipe or journal would hold up every
//! request on that worker, one `write(2)` per access-log line. Why not `tracing-appender`: its
//! guard gives up after about a second at exit and drops what is queued when the queue is
//! full; here the queue is bounded, a full queue makes the logging thread wait (no line is
//! dropped), and [`LogWriterGuard`] writes out everything queued before the process exits.

use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer before a thread that logs waits for it.
pub const QUEUED_LINES: usize = 64 * 1024;
/// Largest batch written at once, in bytes.
const BATCH_BYTES: usize = 64 * 1024;

enum Msg {
    Line(Vec<u8>),
    /// Write out everything before this, then stop.
    Stop,
}

/// Queues each `write` as one line for the writer thread. One event is one `write` call
/// (tracing's fmt layer formats the whole event, then writes it once).
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Msg>,
}

impl Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .send(Msg::Line(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the log writer has stopped"))?;
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
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        // Waits for room when the queue is full: the lines before it are written first.
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start the writer thread on `out` (stderr, for the process's log).
pub fn start(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogWriterGuard)> {
    let (tx, rx) = sync_channel(QUEUED_LINES);
    let thread = std::thread::Builder::new().name("hangar-log".into()).spawn(move || run(rx, out))?;
    Ok((LogWriter { tx: tx.clone() }, LogWriterGuard { tx, thread: Some(thread) }))
}

fn run(rx: Receiver<Msg>, out: impl Write) {
    let mut out = io::BufWriter::with_capacity(BATCH_BYTES, out);
    while let Ok(mut msg) = rx.recv() {
        loop {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Stop => {
                    let _ = out.flush();
                    return;
                }
            }
            match rx.try_recv() {
                Ok(next) => msg = next,
                Err(_) => break,
            }
        }
        // The queue is empty: what was written so far goes out now, so a line waits for
        // nothing but the lines before it.
        let _ = out.flush();
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
        for i in 0..(QUEUED_LINES + 1000) {
            let line = format!("line {i}\n");
            (&writer).write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        drop(guard);
        let written = sink.0.lock().unwrap().0.clone();
        assert!(written == expected, "every line, in order, none lost");
        assert!((&writer).write_all(b"late\n").is_err(), "after the guard, writing is an error, not a hang");
    }
}
