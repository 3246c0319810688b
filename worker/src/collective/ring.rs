//! A TCP ring between the ranks of a CPU run: each rank connects to the next and accepts the
//! previous, and all-reduce is the bandwidth-optimal ring (reduce-scatter, then all-gather:
//! each rank sends and receives `2·(n−1)/n` of the data). Every chunk's sum is formed in the
//! same order on the way round and then copied, so all ranks end bit-identical.

use super::{part, CommError, CommResult, Communicator};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// First bytes of a ring connection: a marker, the run's cookie, the connecting rank.
const MAGIC: [u8; 4] = *b"LPRG";

#[derive(Debug, Clone)]
pub struct RingOptions {
    /// How long to wait for the neighbours to come up.
    pub connect_timeout: Duration,
    /// A read or write that makes no progress for this long fails (a hung peer); `None` waits
    /// forever (a crashed peer still fails at once: its socket closes).
    pub io_timeout: Option<Duration>,
    /// Shared by the ranks of one run (handed out by the coordinator); connections that do not
    /// present it are dropped.
    pub cookie: u64,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(60), io_timeout: Some(Duration::from_secs(600)), cookie: 0 }
    }
}

pub struct TcpRing {
    rank: usize,
    world: usize,
    /// Connection to rank + 1 (we dialled it).
    next: Option<TcpStream>,
    /// Connection from rank − 1 (it dialled us).
    prev: Option<TcpStream>,
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
            return Ok(Self { rank, world, next: None, prev: None });
        }
        let next_rank = (rank + 1) % world;
        let prev_rank = (rank + world - 1) % world;
        let deadline = Instant::now() + opts.connect_timeout;
        let next_addr = addrs[next_rank];
        let (cookie, waited) = (opts.cookie, opts.connect_timeout);
        // Dial the next rank while accepting the previous one: every rank does both, so doing
        // them one after the other would deadlock a ring of listeners.
        let dial = std::thread::spawn(move || -> CommResult<TcpStream> {
            loop {
                match TcpStream::connect_timeout(&next_addr, Duration::from_secs(5)) {
                    Ok(mut s) => {
                        let mut hello = Vec::with_capacity(16);
                        hello.extend_from_slice(&MAGIC);
                        hello.extend_from_slice(&cookie.to_le_bytes());
                        hello.extend_from_slice(&(rank as u32).to_le_bytes());
                        s.write_all(&hello).map_err(|e| io(rank, next_rank, "handshake", e))?;
                        return Ok(s);
                    }
                    Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => return Err(CommError::Timeout { rank, peer: next_rank, waited }),
                }
            }
        });
        let prev = accept_from(&listener, rank, prev_rank, cookie, deadline);
        let next = dial.join().map_err(|_| CommError::Protocol { rank, reason: "the dialling thread panicked".into() })?;
        let (next, prev) = (next?, prev?);
        for (s, peer) in [(&next, next_rank), (&prev, prev_rank)] {
            s.set_nodelay(true).map_err(|e| io(rank, peer, "configuring", e))?;
            s.set_read_timeout(opts.io_timeout).map_err(|e| io(rank, peer, "configuring", e))?;
            s.set_write_timeout(opts.io_timeout).map_err(|e| io(rank, peer, "configuring", e))?;
        }
        Ok(Self { rank, world, next: Some(next), prev: Some(prev) })
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Sends `out` to the next rank while receiving a frame from the previous one.
    fn shift(&mut self, out: &[f32], expect: Option<usize>) -> CommResult<Vec<f32>> {
        let (rank, next_rank, prev_rank) = (self.rank, self.next_rank(), self.prev_rank());
        let (Some(next), Some(prev)) = (self.next.as_mut(), self.prev.as_mut()) else {
            return Err(CommError::Usage { rank, reason: "the ring is not connected".into() });
        };
        // Both directions at once: with blocking sockets, every rank writing first would
        // deadlock as soon as a frame exceeds the kernel's buffers.
        std::thread::scope(|s| {
            let writer = s.spawn(|| write_frame(next, out).map_err(|e| io(rank, next_rank, "sending", e)));
            let got = read_frame(prev).map_err(|e| io(rank, prev_rank, "receiving", e));
            let sent = writer.join().map_err(|_| CommError::Protocol { rank, reason: "the sending thread panicked".into() })?;
            sent?;
            let got = got?;
            match expect {
                Some(n) if got.len() != n => Err(CommError::Protocol {
                    rank,
                    reason: format!("rank {prev_rank} sent {} values where {n} were expected (the ranks' calls differ)", got.len()),
                }),
                _ => Ok(got),
            }
        })
    }
}

fn io(rank: usize, peer: usize, what: &'static str, source: std::io::Error) -> CommError {
    CommError::Io { rank, peer, what, error: source }
}

/// Accepts connections until the previous rank presents the right cookie (others are dropped).
fn accept_from(listener: &TcpListener, rank: usize, prev_rank: usize, cookie: u64, deadline: Instant) -> CommResult<TcpStream> {
    listener.set_nonblocking(true).map_err(|e| io(rank, prev_rank, "listening", e))?;
    let started = Instant::now();
    loop {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| io(rank, prev_rank, "accepting", e))?;
                s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| io(rank, prev_rank, "accepting", e))?;
                let mut hello = [0u8; 16];
                let ok = s.read_exact(&mut hello).is_ok()
                    && hello[..4] == MAGIC
                    && u64::from_le_bytes(hello[4..12].try_into().unwrap_or_default()) == cookie
                    && u32::from_le_bytes(hello[12..16].try_into().unwrap_or_default()) as usize == prev_rank;
                if ok {
                    return Ok(s);
                }
                tracing::warn!(rank, %from, "dropped a ring connection without this run's handshake");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(CommError::Timeout { rank, peer: prev_rank, waited: started.elapsed() });
                }
                std::thread::sleep(Duration::from_millis(10));
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

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<f32>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let n = u64::from_le_bytes(len) as usize;
    let mut bytes = vec![0u8; 4 * n];
    s.read_exact(&mut bytes)?;
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
        read_frame(s).map_err(|e| io(rank, from, "receiving", e))
    }

    fn barrier(&mut self) -> CommResult<()> {
        // Every rank has heard from every other once a ring all-gather completes.
        self.all_gather(&[]).map(|_| ())
    }
}
