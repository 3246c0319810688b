//! A TCP ring between the ranks of a CPU run: each rank connects to the next and accepts the
//! previous, and all-reduce is the bandwidth-optimal ring (reduce-scatter, then all-gather:
//! each rank sends and receives `2·(n−1)/n` of the data). Every chunk's sum is formed in the
//! same order on the way round and then copied, so all ranks end bit-identical.

use super::{part, CommError, CommResult, Communicator};
use hmac::{Hmac, Mac};
use llmprune_shared::proto::{constant_time_eq, random_bytes};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// First bytes of both sides' hellos.
const MAGIC: [u8; 4] = *b"LPR2";
/// A handshake's messages: the listener's `MAGIC nonce`, the dialler's `MAGIC rank nonce
/// proof`, the listener's `proof`.
const NONCE: usize = 16;
const PROOF: usize = 32;
/// How long an accepted connection has to prove itself; handshakes run side by side, so idle
/// or hostile connections delay no one.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes in flight at most; connections beyond are dropped at once.
const MAX_HANDSHAKES: usize = 32;

#[derive(Debug, Clone)]
pub struct RingOptions {
    /// How long to wait for the neighbours to come up.
    pub connect_timeout: Duration,
    /// A read or write that makes no progress for this long fails (a hung peer); `None` waits
    /// forever (a crashed peer still fails at once: its socket closes).
    pub io_timeout: Option<Duration>,
    /// Shared by the ranks of one ring (handed out by the coordinator over its authenticated
    /// channel). Each connection proves it both ways with an HMAC over fresh nonces, so the
    /// secret never crosses the ring's sockets; connections that cannot are dropped.
    pub secret: Vec<u8>,
    /// The largest frame a peer may announce when the receiver does not know what to expect
    /// (values; frames of known length must match it exactly).
    pub max_frame_values: usize,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(60), io_timeout: Some(Duration::from_secs(600)), secret: Vec::new(), max_frame_values: 1 << 28 }
    }
}

pub struct TcpRing {
    rank: usize,
    world: usize,
    /// Connection to rank + 1 (we dialled it).
    next: Option<TcpStream>,
    /// Connection from rank − 1 (it dialled us).
    prev: Option<TcpStream>,
    /// [`RingOptions::max_frame_values`].
    max_frame: usize,
}

impl TcpRing {
    /// Joins the ring as `rank` of `addrs.len()`: `listener` is this rank's own socket (bound
    /// before the addresses were exchanged), `addrs` every rank's listening address.
    pub fn connect(rank: usize, addrs: &[SocketAddr], listener: TcpListener, opts: &RingOptions) -> CommResult<Self> {
        let world = addrs.len();
        if rank >= world {
            return Err(CommError::Usage { rank, reason: format!("rank {rank} outside a world of {world}") });
        }
        if world == 1 {
            return Ok(Self { rank, world, next: None, prev: None, max_frame: opts.max_frame_values });
        }
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let deadline = Instant::now() + opts.connect_timeout;
        let next_addr = addrs[next_rank];
        let (secret, waited) = (opts.secret.clone(), opts.connect_timeout);
        // Dial the next rank while accepting the previous one: every rank does both, so doing
        // them one after the other would deadlock a ring of listeners.
        let dial = std::thread::spawn(move || -> CommResult<TcpStream> {
            loop {
                let failure = match TcpStream::connect_timeout(&next_addr, Duration::from_secs(5)) {
                    Ok(s) => match dial_handshake(s, &secret, rank, deadline) {
                        Ok(s) => return Ok(s),
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                if Instant::now() >= deadline {
                    tracing::warn!(rank, peer = next_rank, %next_addr, error = %failure, "no ring handshake with the next rank");
                    return Err(CommError::Timeout { rank, peer: next_rank, waited });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let prev = accept_from(&listener, rank, prev_rank, &opts.secret, deadline);
        let next = dial.join().map_err(|_| CommError::Protocol { rank, reason: "the dialling thread panicked".into() })?;
        let (next, prev) = (next?, prev?);
        for (s, peer) in [(&next, next_rank), (&prev, prev_rank)] {
            s.set_nodelay(true).map_err(|e| io(rank, peer, "configuring", e))?;
            s.set_read_timeout(opts.io_timeout).map_err(|e| io(rank, peer, "configuring", e))?;
            s.set_write_timeout(opts.io_timeout).map_err(|e| io(rank, peer, "configuring", e))?;
        }
        Ok(Self { rank, world, next: Some(next), prev: Some(prev), max_frame: opts.max_frame_values })
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Sends `out` to the next rank while receiving a frame from the previous one.
    fn shift(&mut self, out: &[f32], expect: Option<usize>) -> CommResult<Vec<f32>> {
        let (rank, next_rank, prev_rank, max_frame) = (self.rank, self.next_rank(), self.prev_rank(), self.max_frame);
        let (Some(next), Some(prev)) = (self.next.as_mut(), self.prev.as_mut()) else {
            return Err(CommError::Usage { rank, reason: "the ring is not connected".into() });
        };
        // Both directions at once: with blocking sockets, every rank writing first would
        // deadlock as soon as a frame exceeds the kernel's buffers.
        std::thread::scope(|s| {
            let writer = s.spawn(|| write_frame(next, out).map_err(|e| io(rank, next_rank, "sending", e)));
            let got = read_frame(prev, expect.unwrap_or(max_frame), expect.is_some()).map_err(|e| io(rank, prev_rank, "receiving", e));
            let sent = writer.join().map_err(|_| CommError::Protocol { rank, reason: "the sending thread panicked".into() })?;
            sent?;
            got
        })
    }
}

fn io(rank: usize, peer: usize, what: &'static str, source: std::io::Error) -> CommError {
    CommError::Io { rank, peer, what, error: source }
}

fn proof(secret: &[u8], role: &[u8], first: &[u8], second: &[u8], rank: u32) -> [u8; PROOF] {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in [role, first, second, &rank.to_le_bytes()] {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn refused(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string())
}

/// The dialler's side: read the listener's nonce, prove the secret as `rank`, check the
/// listener's proof (an impostor at the address learns nothing and is not trusted).
fn dial_handshake(mut s: TcpStream, secret: &[u8], rank: usize, deadline: Instant) -> std::io::Result<TcpStream> {
    // The listener may still be joining an earlier ring: wait for its hello until the deadline.
    s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100))))?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut hello = [0u8; 4 + NONCE];
    s.read_exact(&mut hello)?;
    if hello[..4] != MAGIC {
        return Err(refused("not an llmprune ring"));
    }
    let theirs = &hello[4..];
    let mine: [u8; NONCE] = random_bytes()?;
    let mut reply = Vec::with_capacity(4 + 4 + NONCE + PROOF);
    reply.extend_from_slice(&MAGIC);
    reply.extend_from_slice(&(rank as u32).to_le_bytes());
    reply.extend_from_slice(&mine);
    reply.extend_from_slice(&proof(secret, b"dial", theirs, &mine, rank as u32));
    s.write_all(&reply)?;
    let mut answer = [0u8; PROOF];
    s.read_exact(&mut answer)?;
    if !constant_time_eq(&answer, &proof(secret, b"accept", &mine, theirs, rank as u32)) {
        return Err(refused("the listener does not know this ring's secret"));
    }
    Ok(s)
}

/// The listener's side with one accepted connection: send a nonce, check the dialler's proof
/// as `expected` rank, prove the secret back.
fn accept_handshake(mut s: TcpStream, secret: &[u8], expected: usize) -> std::io::Result<TcpStream> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    s.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mine: [u8; NONCE] = random_bytes()?;
    let mut hello = Vec::with_capacity(4 + NONCE);
    hello.extend_from_slice(&MAGIC);
    hello.extend_from_slice(&mine);
    s.write_all(&hello)?;
    let mut reply = [0u8; 4 + 4 + NONCE + PROOF];
    s.read_exact(&mut reply)?;
    let rank = u32::from_le_bytes([reply[4], reply[5], reply[6], reply[7]]);
    let theirs = &reply[8..8 + NONCE];
    let ok = reply[..4] == MAGIC && rank as usize == expected && constant_time_eq(&reply[8 + NONCE..], &proof(secret, b"dial", &mine, theirs, rank));
    if !ok {
        return Err(refused("no proof of this ring's secret from the expected rank"));
    }
    s.write_all(&proof(secret, b"accept", theirs, &mine, rank))?;
    Ok(s)
}

/// Accepts connections until the previous rank proves the ring's secret. Each connection
/// shakes hands on a thread of its own with a short deadline, so a crowd of idle or hostile
/// connections cannot hold the ring up; those that fail are dropped and logged.
fn accept_from(listener: &TcpListener, rank: usize, prev_rank: usize, secret: &[u8], deadline: Instant) -> CommResult<TcpStream> {
    listener.set_nonblocking(true).map_err(|e| io(rank, prev_rank, "listening", e))?;
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<(SocketAddr, std::io::Result<TcpStream>)>();
    let mut in_flight = 0usize;
    loop {
        while let Ok((from, shaken)) = rx.try_recv() {
            in_flight -= 1;
            match shaken {
                Ok(s) => return Ok(s),
                Err(e) => tracing::warn!(rank, %from, error = %e, "dropped a ring connection that failed the handshake"),
            }
        }
        match listener.accept() {
            Ok((s, from)) if in_flight < MAX_HANDSHAKES => {
                in_flight += 1;
                let (tx, secret) = (tx.clone(), secret.to_vec());
                std::thread::spawn(move || {
                    let _ = tx.send((from, accept_handshake(s, &secret, prev_rank)));
                });
            }
            Ok((_, from)) => tracing::warn!(rank, %from, "dropped a ring connection: too many handshakes in flight"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CommError::Timeout { rank, peer: prev_rank, waited: started.elapsed() });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io(rank, prev_rank, "accepting", e)),
        }
    }
}

fn write_frame(s: &mut TcpStream, data: &[f32]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8 + 4 * data.len());
    buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
    for x in data {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    s.write_all(&buf)
}

/// A frame of at most `limit` values (exactly `limit` when `exact`): its memory grows with the
/// bytes that arrive, never with what the peer announces.
fn read_frame(s: &mut TcpStream, limit: usize, exact: bool) -> std::io::Result<Vec<f32>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len);
    if n > limit as u64 || (exact && n != limit as u64) {
        let expected = if exact { format!("{limit} values were expected") } else { format!("at most {limit} are accepted") };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a frame of {n} values where {expected} (the ranks' calls differ)")));
    }
    let mut bytes = Vec::new();
    s.take(4 * n).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != 4 * n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

impl Communicator for TcpRing {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, data: &mut [f32]) -> CommResult<()> {
        let (n, r, len) = (self.world, self.rank, data.len());
        if n == 1 {
            return Ok(());
        }
        // Reduce-scatter: after step s, the chunk received is summed over s + 2 ranks; after
        // n − 1 steps rank r holds the whole sum of chunk r + 1.
        for s in 0..n - 1 {
            let send = part(len, n, (r + n - s) % n);
            let recv = part(len, n, (r + 2 * n - s - 1) % n);
            let got = self.shift(&data[send], Some(recv.len()))?;
            for (d, x) in data[recv].iter_mut().zip(got) {
                *d += x;
            }
        }
        // All-gather the finished chunks.
        for s in 0..n - 1 {
            let send = part(len, n, (r + 1 + n - s) % n);
            let recv = part(len, n, (r + n - s) % n);
            let got = self.shift(&data[send], Some(recv.len()))?;
            data[recv].copy_from_slice(&got);
        }
        Ok(())
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> CommResult<()> {
        let (n, r) = (self.world, self.rank);
        if root >= n {
            return Err(CommError::Usage { rank: r, reason: format!("broadcast from rank {root} of {n}") });
        }
        if n == 1 {
            return Ok(());
        }
        // Passed along the ring from the root; the rank before the root does not forward.
        if r != root {
            let got = self.recv(self.prev_rank())?;
            if got.len() != data.len() {
                return Err(CommError::Protocol { rank: r, reason: format!("broadcast of {} values into {}", got.len(), data.len()) });
            }
            data.copy_from_slice(&got);
        }
        if self.next_rank() != root {
            self.send(data, self.next_rank())?;
        }
        Ok(())
    }

    fn all_gather(&mut self, data: &[f32]) -> CommResult<Vec<Vec<f32>>> {
        let (n, r) = (self.world, self.rank);
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); n];
        out[r] = data.to_vec();
        // Step s forwards the block of rank r − s and receives the block of rank r − s − 1.
        for s in 0..n.saturating_sub(1) {
            let send = (r + n - s) % n;
            let got = self.shift(&out[send].clone(), None)?;
            out[(r + 2 * n - s - 1) % n] = got;
        }
        Ok(out)
    }

    fn send(&mut self, data: &[f32], to: usize) -> CommResult<()> {
        let rank = self.rank;
        let stream = if self.world > 1 && to == self.next_rank() {
            self.next.as_mut()
        } else if self.world > 1 && to == self.prev_rank() {
            self.prev.as_mut()
        } else {
            None
        };
        let s = stream.ok_or_else(|| CommError::Usage { rank, reason: format!("send to rank {to}: only ring neighbours are connected") })?;
        write_frame(s, data).map_err(|e| io(rank, to, "sending", e))
    }

    fn recv(&mut self, from: usize) -> CommResult<Vec<f32>> {
        let rank = self.rank;
        // Mirror of `send`: what rank − 1 sent on its `next` arrives on our `prev`.
        let stream = if self.world > 1 && from == self.prev_rank() {
            self.prev.as_mut()
        } else if self.world > 1 && from == self.next_rank() {
            self.next.as_mut()
        } else {
            None
        };
        let s = stream.ok_or_else(|| CommError::Usage { rank, reason: format!("recv from rank {from}: only ring neighbours are connected") })?;
        read_frame(s, self.max_frame, false).map_err(|e| io(rank, from, "receiving", e))
    }

    fn barrier(&mut self) -> CommResult<()> {
        // Every rank has heard from every other once a ring all-gather completes.
        self.all_gather(&[]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (a, l.accept().unwrap().0)
    }

    #[test]
    fn frames_are_bounded_by_what_the_receiver_expects() {
        // A peer announcing 2^60 values and sending none: refused before anything is allocated.
        let (mut a, mut b) = pair();
        a.write_all(&(1u64 << 60).to_le_bytes()).unwrap();
        let e = read_frame(&mut b, 1 << 28, false).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("at most 268435456"), "{e}");
        // A frame of another length than the call expects.
        let (mut a, mut b) = pair();
        write_frame(&mut a, &[1.0, 2.0, 3.0]).unwrap();
        assert!(read_frame(&mut b, 2, true).unwrap_err().to_string().contains("2 values were expected"));
        // An announced length the peer does not deliver: an error, not a short frame.
        let (mut a, mut b) = pair();
        a.write_all(&5u64.to_le_bytes()).unwrap();
        a.write_all(&1f32.to_le_bytes()).unwrap();
        drop(a);
        assert_eq!(read_frame(&mut b, 8, false).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        let (mut a, mut b) = pair();
        write_frame(&mut a, &[1.5, -2.0]).unwrap();
        assert_eq!(read_frame(&mut b, 2, true).unwrap(), [1.5, -2.0]);
    }

    #[test]
    fn a_handshake_proves_the_secret_both_ways_without_sending_it() {
        let shake = |dialler: &'static [u8], listener: &'static [u8], expected: usize| {
            let (a, b) = pair();
            let accepted = std::thread::spawn(move || accept_handshake(b, listener, expected).map(|_| ()));
            let dialled = dial_handshake(a, dialler, 1, Instant::now() + Duration::from_secs(5)).map(|_| ());
            (dialled, accepted.join().unwrap())
        };
        let (d, a) = shake(b"s3cret", b"s3cret", 1);
        assert!(d.is_ok() && a.is_ok());
        // The wrong secret on either side, or the wrong rank: both ends refuse.
        let (d, a) = shake(b"guess", b"s3cret", 1);
        assert!(d.is_err() && a.is_err());
        let (_, a) = shake(b"s3cret", b"s3cret", 2);
        assert!(a.unwrap_err().to_string().contains("expected rank"));
        let (d, _) = shake(b"s3cret", b"impostor", 1);
        assert!(d.is_err());
        // What crosses the wire: nonces and proofs, never the secret.
        let (mut a, b) = pair();
        let listener = std::thread::spawn(move || accept_handshake(b, b"TOPSECRETVALUE", 1));
        let mut hello = [0u8; 4 + NONCE];
        a.read_exact(&mut hello).unwrap();
        assert!(!hello.windows(6).any(|w| w == b"TOPSEC"));
        drop(a);
        assert!(listener.join().unwrap().is_err());
    }
}
