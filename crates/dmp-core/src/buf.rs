//! Recycled chunk buffers.
//!
//! A transfer moves every byte of a file through a few buffers of one
//! block each: read, sealed, stored; fetched, opened, written. Allocating a
//! fresh buffer per chunk makes the kernel hand out, fault in and zero new
//! pages for every block, and on virtual machines that give freed memory
//! back to the host (free page reporting) each of those first touches is a
//! fault in the host too. Measured here: writing 1 GiB into freshly freed
//! memory took 0.25 s of system time, into memory freed 6 s earlier 2.5 s.
//! So large buffers are taken from and returned to a small pool, and a
//! [`Bytes`] made by [`freeze`] returns its buffer when its last clone drops.
//!
//! The pool keeps at most [`POOL_BYTES`] bytes, so it bounds, not grows, the
//! memory a transfer holds. Buffers below [`MIN_POOLED`] bytes are left to
//! the allocator.

use bytes::Bytes;
use std::sync::Mutex;

/// Smaller buffers are not pooled.
pub const MIN_POOLED: usize = 64 << 10;
/// Most bytes of capacity the pool keeps.
pub const POOL_BYTES: usize = 24 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer with room for at least `capacity` bytes: a recycled one
/// when one fits (no more than twice the size asked for), else a new one.
pub fn vec(capacity: usize) -> Vec<u8> {
    if capacity >= MIN_POOLED {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = pool.iter().position(|v| v.capacity() >= capacity && v.capacity() / 2 <= capacity) {
            let mut v = pool.swap_remove(i);
            v.clear();
            return v;
        }
    }
    Vec::with_capacity(capacity)
}

/// Gives a buffer back for reuse (dropped if small or the pool is full).
pub fn recycle(v: Vec<u8>) {
    if v.capacity() < MIN_POOLED {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = pool.iter().map(Vec::capacity).sum();
    if held + v.capacity() <= POOL_BYTES {
        pool.push(v);
    }
}

/// `v` as [`Bytes`] that gives the buffer back to the pool when the last
/// clone is dropped.
pub fn freeze(v: Vec<u8>) -> Bytes {
    if v.capacity() < MIN_POOLED {
        return Bytes::from(v);
    }
    Bytes::from_owner(Recycled(v))
}

struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is global: these tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn a_frozen_buffer_comes_back_when_its_last_clone_drops() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        POOL.lock().unwrap().clear();
        let mut v = vec(1 << 20);
        v.extend_from_slice(&[7u8; 1000]);
        let ptr = v.as_ptr();
        let b = freeze(v);
        let c = b.clone();
        drop(b);
        assert_eq!(&c[..3], &[7, 7, 7]);
        drop(c);
        let pool = POOL.lock().unwrap();
        assert!(pool.iter().any(|v| v.as_ptr() == ptr), "the buffer is back in the pool");
    }

    #[test]
    fn the_pool_stays_bounded_and_small_buffers_are_not_kept() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..100 {
            recycle(Vec::with_capacity(4 << 20));
        }
        recycle(Vec::with_capacity(100));
        let pool = POOL.lock().unwrap();
        assert!(pool.iter().map(Vec::capacity).sum::<usize>() <= POOL_BYTES);
        assert!(pool.iter().all(|v| v.capacity() >= MIN_POOLED));
    }

    #[test]
    fn a_recycled_buffer_is_empty_and_big_enough() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        POOL.lock().unwrap().clear();
        recycle(vec![1u8; 200 << 10]);
        let v = vec(150 << 10);
        assert!(v.is_empty());
        assert!(v.capacity() >= 150 << 10);
    }
}
