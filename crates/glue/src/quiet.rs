//! Running third-party parsers that panic on some damaged files instead of
//! returning an error (`tokenizers` 0.22, `parquet` 58 and 60; each case found by
//! fuzzing, see docs/reliability.md): the panic is caught and becomes an
//! error naming the file, and its report is silenced on this thread only,
//! so the user sees one sentence, not a backtrace.

use std::any::Any;
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// Set while this thread runs code whose panics become errors.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`; a panic in it becomes `Err` with the panic's message. The
/// panic hook stays silent for it, and for every other thread and panic it
/// behaves as before.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(message)
}

/// The message a panic carried.
fn message(panic: Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no reason given".to_string())
}
