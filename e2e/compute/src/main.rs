//! B4 of `make bench`: a fixed amount of CPU-bound work (integer hashing and
//! mixing over a 1 MiB buffer, plus a prime sieve), timed inside the program
//! so that start-up is not part of the figure. Built from this one source
//! for wasm32-wasip1 (run by wasmpod) and natively (run by runc).
//!
//! Usage: `wasmpod-compute ROUNDS` → prints `checksum=<hex> compute_ms=<ms>`.

use std::hint::black_box;
use std::time::Instant;

fn mix(rounds: u32) -> u64 {
    let mut buf = vec![0u64; 1 << 17];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for (i, v) in buf.iter_mut().enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *v = x ^ i as u64;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in 0..rounds {
        for v in buf.iter_mut() {
            h = (h ^ *v).wrapping_mul(0x0100_0000_01b3);
            *v = v.rotate_left(r % 63 + 1) ^ h;
        }
    }
    h
}

/// Counts the primes up to `limit`. The multiples are walked in `u64`:
/// `n * n` overflows a 32-bit `usize` (wasm32) above 65535, and a wrapped
/// product would mark wrong entries and do different work than natively.
fn sieve(limit: usize) -> u64 {
    let mut composite = vec![false; limit + 1];
    let mut count = 0u64;
    for n in 2..=limit {
        if !composite[n] {
            count += 1;
            let step = n as u64;
            let mut m = step * step;
            while m <= limit as u64 {
                composite[m as usize] = true;
                m += step;
            }
        }
    }
    count
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let start = Instant::now();
    let h = mix(black_box(rounds));
    let primes = sieve(black_box(rounds as usize * 20_000));
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!("checksum={:016x} primes={primes} compute_ms={ms:.1}", h);
}
