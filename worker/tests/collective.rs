//! The TCP ring against a naive reduction, for several world sizes and uneven lengths, and
//! its failure modes: strangers are turned away, a lost peer is named.

use llmprune_worker::collective::{CommError, Communicator, RingOptions, TcpRing};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Runs `body` on every rank of a loopback ring of `world` ranks; results by rank.
fn with_ring<T: Send + 'static>(world: usize, cookie: u64, body: impl Fn(TcpRing) -> T + Send + Sync + Copy + 'static) -> Vec<T> {
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let opts = RingOptions {
        connect_timeout: Duration::from_secs(20),
        io_timeout: Some(Duration::from_secs(20)),
        secret: cookie.to_le_bytes().to_vec(),
        ..Default::default()
    };
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (addrs, opts) = (addrs.clone(), opts.clone());
            std::thread::spawn(move || body(TcpRing::connect(rank, &addrs, listener, &opts).unwrap()))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Deterministic values that make float sums order-sensitive.
fn values(rank: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| (((i * 7919 + rank * 104729) % 1000) as f32 - 500.0) * 1.37e-3 * (1.0 + rank as f32)).collect()
}

const LENGTHS: [usize; 7] = [0, 1, 2, 3, 5, 1000, 40_961];

#[test]
fn all_reduce_matches_a_naive_sum_and_is_identical_on_every_rank() {
    for world in 1..=4 {
        let results = with_ring(world, 7, |mut ring| {
            LENGTHS
                .iter()
                .map(|&len| {
                    let mut v = values(ring.rank(), len);
                    ring.all_reduce_sum(&mut v).unwrap();
                    v
                })
                .collect::<Vec<_>>()
        });
        for (k, &len) in LENGTHS.iter().enumerate() {
            assert_eq!(results[0][k].len(), len);
            for (i, &got) in results[0][k].iter().enumerate() {
                let terms: Vec<f64> = (0..world).map(|r| values(r, len)[i] as f64).collect();
                let want: f64 = terms.iter().sum();
                // f32 rounding of each partial sum: a few ulps of the terms' magnitude.
                let tol = 4.0 * f32::EPSILON as f64 * terms.iter().map(|t| t.abs()).sum::<f64>();
                let got = got as f64;
                assert!((got - want).abs() <= tol, "world {world} len {len} [{i}]: {got} vs {want}");
            }
            for r in 1..world {
                let same = results[r][k].iter().zip(&results[0][k]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "world {world} len {len}: rank {r} differs from rank 0");
            }
        }
    }
}

#[test]
fn broadcast_gather_point_to_point_and_barrier() {
    for world in 1..=4 {
        let results = with_ring(world, 11, move |mut ring| {
            let (r, n) = (ring.rank(), ring.world_size());
            let mut from_roots = Vec::new();
            for root in 0..n {
                let mut v = if r == root { values(root, 33) } else { vec![0.0; 33] };
                ring.broadcast(&mut v, root).unwrap();
                from_roots.push(v);
            }
            // Uneven lengths: rank r contributes r + 1 values.
            let gathered = ring.all_gather(&values(r, r + 1)).unwrap();
            // A pipeline's two directions: activations forward, gradients back.
            let mut received = Vec::new();
            if r + 1 < n {
                ring.send(&values(r, 9), r + 1).unwrap();
            }
            if r > 0 {
                received.push(ring.recv(r - 1).unwrap());
                ring.send(&values(r, 4), r - 1).unwrap();
            }
            if r + 1 < n {
                received.push(ring.recv(r + 1).unwrap());
            }
            ring.barrier().unwrap();
            (from_roots, gathered, received)
        });
        for (r, (from_roots, gathered, received)) in results.iter().enumerate() {
            for (root, v) in from_roots.iter().enumerate() {
                assert_eq!(v, &values(root, 33), "world {world} rank {r} root {root}");
            }
            let want: Vec<Vec<f32>> = (0..world).map(|q| values(q, q + 1)).collect();
            assert_eq!(gathered, &want);
            let mut expect = Vec::new();
            if r > 0 {
                expect.push(values(r - 1, 9));
            }
            if r + 1 < world {
                expect.push(values(r + 1, 4));
            }
            assert_eq!(received, &expect, "world {world} rank {r}");
        }
    }
}

#[test]
fn tensor_collectives_equal_the_slice_collectives_on_the_ring() {
    use candle_core::{DType, Device, Tensor};
    let results = with_ring(3, 13, |mut ring| {
        let (r, n) = (ring.rank(), ring.world_size());
        let dev = Device::Cpu;
        let mut flat = values(r, 1000);
        let t = Tensor::from_vec(flat.clone(), (10, 100), &dev).unwrap();
        let reduced = ring.all_reduce_sum_tensor(&t).unwrap();
        ring.all_reduce_sum(&mut flat).unwrap();
        let same = reduced.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().zip(&flat).all(|(a, b)| a.to_bits() == b.to_bits());
        // Hidden states forward in bf16, as a bf16 pipeline sends them.
        let hidden = |q: usize| Tensor::from_vec(values(q, 24), (2, 3, 4), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        if r + 1 < n {
            ring.send_tensor(&hidden(r), r + 1).unwrap();
        }
        let got = if r > 0 { Some(ring.recv_tensor(r - 1, &[2, 3, 4], DType::BF16, &dev).unwrap()) } else { None };
        let want = if r > 0 { Some(hidden(r - 1)) } else { None };
        let bits = |t: Option<Tensor>| t.map(|t| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        (same, reduced.dtype(), bits(got), bits(want))
    });
    for (r, (same, dtype, got, want)) in results.into_iter().enumerate() {
        assert!(same, "rank {r}: the tensor all-reduce differs from the slice all-reduce");
        assert_eq!(dtype, candle_core::DType::F32);
        assert_eq!(got, want, "rank {r}");
    }
}

#[test]
fn strangers_are_dropped_and_a_lost_peer_is_named() {
    // Before rank 0 dials, rank 1's listener is crowded: forty idle connections (more than
    // the handshakes it runs at once), the old protocol's hello, and a dialler that speaks the
    // protocol without the secret. The ring still forms, within a couple of handshake
    // deadlines rather than one deadline per stranger.
    let listeners: Vec<TcpListener> = (0..2).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let idle: Vec<std::net::TcpStream> = (0..40).map(|_| std::net::TcpStream::connect(addrs[1]).unwrap()).collect();
    let mut old = std::net::TcpStream::connect(addrs[1]).unwrap();
    std::io::Write::write_all(&mut old, b"LPRG\0\0\0\0\0\0\0\0\0\0\0\0").unwrap();
    let target = addrs[1];
    // The forger tries until it is heard or the ring has formed (its listener gone); it must
    // never receive a proof.
    let forger = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut hello = [0u8; 20];
        loop {
            let Ok(mut s) = std::net::TcpStream::connect(target) else { return false };
            // Dropped at once while the listener's handshakes are all taken: try again.
            if s.read_exact(&mut hello).is_err() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            let mut reply = b"LPR2".to_vec();
            reply.extend_from_slice(&0u32.to_le_bytes());
            reply.extend_from_slice(&[7u8; 48]);
            let _ = s.write_all(&reply);
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            return !answer.is_empty();
        }
    });
    let opts =
        RingOptions { connect_timeout: Duration::from_secs(20), io_timeout: Some(Duration::from_secs(20)), secret: b"this run".to_vec(), ..Default::default() };
    let started = std::time::Instant::now();
    let mut it = listeners.into_iter();
    let (l0, l1) = (it.next().unwrap(), it.next().unwrap());
    let (a0, o0) = (addrs.clone(), opts.clone());
    let rank0 = std::thread::spawn(move || {
        let mut ring = TcpRing::connect(0, &a0, l0, &o0).unwrap();
        ring.barrier().unwrap();
        // Rank 1 is gone now: the next collective fails and names it.
        let mut v = vec![1.0; 10];
        ring.all_reduce_sum(&mut v).unwrap_err()
    });
    let mut ring1 = TcpRing::connect(1, &addrs, l1, &opts).unwrap();
    ring1.barrier().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the ring took {:?} to form", started.elapsed());
    assert!(!forger.join().unwrap(), "the forger got an answer");
    drop((idle, old));
    drop(ring1);
    let err = rank0.join().unwrap();
    assert!(matches!(err, CommError::Io { rank: 0, peer: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("rank 1"), "{err}");

    // Nobody listening: a timeout naming the missing neighbour, not a hang.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = vec![l.local_addr().unwrap(), dead.local_addr().unwrap()];
    drop(dead);
    let quick = RingOptions { connect_timeout: Duration::from_millis(300), ..opts };
    let err = TcpRing::connect(0, &addrs, l, &quick).err().unwrap();
    assert!(matches!(err, CommError::Timeout { rank: 0, peer: 1, .. }), "{err:?}");
}
