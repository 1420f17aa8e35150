//! The engine's worker threads.
//!
//! Kernels run on one rayon pool owned by the engine, sized from
//! [`set_num_threads`], else the `TESSERA_THREADS` environment variable, else
//! the number of cores. Work is split so that results never depend on the
//! thread count: every output element is computed by exactly one thread, in
//! the same order of operations.

use crate::error::{Result, TensorError};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, OnceLock, RwLock};

static POOL: OnceLock<RwLock<Arc<ThreadPool>>> = OnceLock::new();

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("tessera-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| TensorError::Setting(format!("cannot start {n} worker threads: {e}")))
}

fn default_threads() -> usize {
    std::env::var("TESSERA_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn pool() -> Arc<ThreadPool> {
    let lock = POOL.get_or_init(|| {
        let pool = build(default_threads())
            .or_else(|_| build(1))
            .expect("a one-thread pool can always be built");
        RwLock::new(pool)
    });
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Sets the number of worker threads the kernels use (at least 1).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(TensorError::Setting(
            "the thread count must be at least 1".into(),
        ));
    }
    let new = build(n)?;
    let lock = POOL.get_or_init(|| RwLock::new(new.clone()));
    *lock.write().unwrap_or_else(|e| e.into_inner()) = new;
    Ok(())
}

/// The number of worker threads the kernels use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f` inside the engine's pool, so rayon calls in it use that pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}
