//! Merging the server's per-row `CopyData` messages into few large ones.
//!
//! PostgreSQL sends every row of a `COPY … TO STDOUT` as its own `CopyData` message, and
//! tokio-postgres hands each message over as its own buffer: at TPC-H's narrow rows that
//! bookkeeping cost more CPU than decoding the rows. The protocol lets `CopyData`
//! boundaries fall anywhere ("not required to have anything to do with row boundaries"),
//! so this reader, placed between the decrypted connection and tokio-postgres, rewrites
//! each run of whole `CopyData` messages it has received into one message carrying their
//! bytes. Every other message passes through unchanged, and no message is held back
//! waiting for more input.
//!
//! Only `COPY TO` produces backend `CopyData` on the connections this source opens (it
//! never starts replication, whose `CopyData` messages are units of their own).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsStream};

const COPY_DATA: u8 = b'd';
/// A message's type byte and length.
const HEADER: usize = 5;
/// Bytes read from the connection at a time.
const READ_SIZE: usize = 64 * 1024;

/// A connection whose `CopyData` runs are merged on the way in; writes go straight through.
pub struct CopyCoalescing<S> {
    inner: S,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of the current message still to pass through unchanged (0 at a boundary).
    pass: usize,
    eof: bool,
    framing: Framing,
}

impl<S> std::fmt::Debug for CopyCoalescing<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the buffered bytes: they are rows.
        f.debug_struct("CopyCoalescing")
            .field("framing", &self.framing)
            .field("buffered", &(self.end - self.start))
            .field("eof", &self.eof)
            .finish()
    }
}

/// What the bytes read are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The one-byte answer to `SSLRequest`, then messages.
    SslAnswer,
    /// Protocol messages.
    Messages,
    /// TLS records: passed on untouched (merging happens above the decryption).
    Opaque,
}

/// What the buffer allows at a message boundary.
enum Step {
    /// Merged `CopyData` was written.
    Wrote,
    /// Pass the next `n` bytes (one message) through as they are.
    Pass(usize),
    /// The next message is not whole yet.
    NeedMore,
    /// The next length field is impossible: the bytes are not messages.
    Garbled,
}

impl<S> CopyCoalescing<S> {
    /// Reads `inner` as a stream of protocol messages, from a message boundary.
    pub fn new(inner: S) -> Self {
        CopyCoalescing {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            pass: 0,
            eof: false,
            framing: Framing::Messages,
        }
    }

    /// Reads a fresh connection on which `SSLRequest` is sent first: the server's
    /// one-byte answer passes, then messages follow (or TLS, see [`Self::into_opaque`]).
    pub fn before_ssl_request(inner: S) -> Self {
        CopyCoalescing {
            framing: Framing::SslAnswer,
            ..Self::new(inner)
        }
    }

    /// Stops interpreting the bytes, which from here are TLS records.
    pub fn into_opaque(self) -> Self {
        CopyCoalescing {
            framing: Framing::Opaque,
            ..self
        }
    }

    /// Moves up to `n` buffered bytes to `out` unchanged; returns how many.
    fn pass(&mut self, n: usize, out: &mut ReadBuf<'_>) -> usize {
        let n = n.min(self.end - self.start).min(out.remaining());
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }

    /// At a message boundary: writes the run of whole `CopyData` messages that fits
    /// `out` as one message, or says what else to do.
    fn step(&mut self, out: &mut ReadBuf<'_>) -> Step {
        let data = &self.buf[self.start..self.end];
        if data.len() < HEADER {
            return Step::NeedMore;
        }
        let size = |at: &[u8]| {
            (u32::from_be_bytes([at[1], at[2], at[3], at[4]]) as usize).saturating_add(1)
        };
        let first = size(data);
        if first < HEADER {
            return Step::Garbled;
        }
        if data[0] != COPY_DATA {
            return Step::Pass(first);
        }
        let mut run = 0;
        let mut payload = 0;
        while data.len() - run >= HEADER && data[run] == COPY_DATA {
            let len = size(&data[run..]);
            if len < HEADER
                || run + len > data.len()
                || HEADER + payload + (len - HEADER) > out.remaining()
            {
                break;
            }
            payload += len - HEADER;
            run += len;
        }
        if run == 0 {
            // Wait for the rest of a message that fits once whole; pass a larger one on
            // piecemeal rather than buffer it.
            let fits = first <= READ_SIZE && first <= out.remaining();
            return if fits && first > data.len() && !self.eof {
                Step::NeedMore
            } else {
                Step::Pass(first)
            };
        }
        out.put_slice(&[COPY_DATA]);
        out.put_slice(&((payload + 4) as u32).to_be_bytes());
        let stop = self.start + run;
        let mut at = self.start;
        while at < stop {
            let len = size(&self.buf[at..]);
            out.put_slice(&self.buf[at + HEADER..at + len]);
            at += len;
        }
        self.start = stop;
        Step::Wrote
    }

    /// Reads more input into the buffer, keeping what is not yet passed on.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
    {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + READ_SIZE {
            self.buf.resize(self.end + READ_SIZE, 0);
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        self.eof = n == 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CopyCoalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.framing == Framing::Opaque && this.start == this.end && !this.eof {
                if this.buf.capacity() > 0 {
                    // Never needed again: the layer above TLS merges.
                    (this.buf, this.start, this.end) = (Vec::new(), 0, 0);
                }
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.start < this.end {
                if this.framing != Framing::Messages {
                    let n = if this.framing == Framing::SslAnswer {
                        1
                    } else {
                        usize::MAX
                    };
                    this.pass(n, out);
                    if this.framing == Framing::SslAnswer {
                        this.framing = Framing::Messages;
                    }
                    return Poll::Ready(Ok(()));
                }
                if this.pass > 0 {
                    this.pass -= this.pass(this.pass, out);
                    return Poll::Ready(Ok(()));
                }
                match this.step(out) {
                    Step::Wrote => return Poll::Ready(Ok(())),
                    Step::Pass(n) => {
                        this.pass = n;
                        continue;
                    }
                    Step::Garbled => {
                        // Hand everything on as it comes, for tokio-postgres to report.
                        this.framing = Framing::Opaque;
                        continue;
                    }
                    Step::NeedMore if this.eof => {
                        // A truncated message: hand it on for tokio-postgres to report.
                        let rest = this.end - this.start;
                        this.pass(rest, out);
                        return Poll::Ready(Ok(()));
                    }
                    Step::NeedMore => {}
                }
            } else if this.eof {
                return Poll::Ready(Ok(()));
            }
            ready!(this.fill(cx))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CopyCoalescing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: TlsStream + Unpin> TlsStream for CopyCoalescing<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A tiny deterministic generator, so a failure reproduces.
    struct Xorshift(u64);

    impl Xorshift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    fn message(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// The messages of `bytes`, with each run of CopyData joined: what merging keeps.
    fn normalized(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            let (tag, payload) = (bytes[0], &bytes[5..1 + len]);
            match out.last_mut() {
                Some((b'd', run)) if tag == b'd' => run.extend_from_slice(payload),
                _ => out.push((tag, payload.to_vec())),
            }
            bytes = &bytes[1 + len..];
        }
        out
    }

    fn count(mut bytes: &[u8], tag: u8) -> usize {
        let mut n = 0;
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            n += usize::from(bytes[0] == tag);
            bytes = &bytes[1 + len..];
        }
        n
    }

    /// Hands out its bytes a few at a time, sometimes not at all yet.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        rng: Xorshift,
        most: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.rng.below(4) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let most = self.most;
            let n = (1 + self.rng.below(most))
                .min(self.data.len() - self.at)
                .min(out.remaining());
            let at = self.at;
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// A COPY's worth of messages: rows of many sizes (one larger than the read buffer),
    /// with a notice between rows, as the server may send them.
    fn stream(rng: &mut Xorshift) -> Vec<u8> {
        let mut bytes = message(b'H', &[0, 0, 2, 0, 0, 0, 0]);
        for row in 0..3000 {
            let len = match row {
                1500 => READ_SIZE + 1000,
                _ => rng.below(60),
            };
            let payload: Vec<u8> = (0..len).map(|i| (row + i) as u8).collect();
            bytes.extend(message(b'd', &payload));
            if row % 700 == 699 {
                bytes.extend(message(b'N', b"SNOTICE\0Mnotice mid-copy\0\0"));
            }
        }
        bytes.extend(message(b'c', b""));
        bytes.extend(message(b'C', b"COPY 3000\0"));
        bytes.extend(message(b'Z', b"I"));
        bytes
    }

    async fn read_all(data: Vec<u8>, seed: u64, most_in: usize, most_out: usize) -> Vec<u8> {
        let mut rng = Xorshift(seed);
        let trickle = Trickle {
            data,
            at: 0,
            rng: Xorshift(seed ^ 0x9e37_79b9),
            most: most_in,
        };
        let mut reader = CopyCoalescing::new(trickle);
        let mut out = Vec::new();
        let mut buf = vec![0; most_out];
        loop {
            let size = 1 + rng.below(most_out);
            let n = reader.read(&mut buf[..size]).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn merging_keeps_every_byte_and_message_in_order() {
        for (seed, most_in, most_out) in [
            (1, 7, 5),
            (2, 100, 64),
            (3, 5000, 9000),
            (4, 70_000, 8192),
            (5, 70_000, 200_000),
        ] {
            let data = stream(&mut Xorshift(seed));
            let out = read_all(data.clone(), seed, most_in, most_out).await;
            assert_eq!(
                normalized(&out),
                normalized(&data),
                "seed {seed}, reads of up to {most_in} and {most_out} bytes"
            );
            if most_in > 1000 && most_out > 1000 {
                let (before, after) = (count(&data, b'd'), count(&out, b'd'));
                assert!(after * 10 < before, "{after} of {before} CopyData left");
            }
        }
    }

    /// Reads `reader` to its end in reads of up to 4096 bytes.
    async fn drain<S: AsyncRead + Unpin>(reader: &mut CopyCoalescing<S>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn a_truncated_stream_is_handed_on_as_it_is() {
        let mut data = message(b'd', b"row one");
        data.extend(message(b'd', b"row two"));
        data.extend_from_slice(&[b'd', 0, 0, 0, 40, 1, 2]);
        let out = drain(&mut CopyCoalescing::new(&data[..])).await;
        assert_eq!(out.len(), data.len() - 5);
        assert_eq!(&out[..5], &[b'd', 0, 0, 0, 18]);
        assert_eq!(&out[out.len() - 7..], &[b'd', 0, 0, 0, 40, 1, 2]);
    }

    #[tokio::test]
    async fn an_impossible_length_stops_the_merging() {
        let mut data = message(b'd', b"row one");
        data.extend_from_slice(&[b'd', 0, 0, 0, 2]);
        data.extend(message(b'd', b"row two"));
        data.extend(message(b'd', b"row three"));
        let out = drain(&mut CopyCoalescing::new(&data[..])).await;
        assert_eq!(out, data);
    }

    #[tokio::test]
    async fn the_answer_to_ssl_request_passes_first() {
        // Refused: messages follow in the clear, and are merged.
        let mut data = vec![b'N'];
        data.extend(message(b'd', b"one"));
        data.extend(message(b'd', b"two"));
        let out = drain(&mut CopyCoalescing::before_ssl_request(&data[..])).await;
        let mut merged = vec![b'N'];
        merged.extend(message(b'd', b"onetwo"));
        assert_eq!(out, merged);

        // Accepted: after the answer, the bytes (TLS records here, which may look like
        // messages) pass untouched, including those already buffered.
        let mut data = vec![b'S'];
        data.extend(message(b'd', b"one"));
        data.extend(message(b'd', b"two"));
        let mut reader = CopyCoalescing::before_ssl_request(&data[..]);
        let mut answer = [0; 16];
        assert_eq!(reader.read(&mut answer).await.unwrap(), 1);
        assert_eq!(answer[0], b'S');
        let out = drain(&mut reader.into_opaque()).await;
        assert_eq!(out, data[1..]);
    }
}
