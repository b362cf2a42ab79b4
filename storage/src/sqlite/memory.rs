//! SQLite allocates from the process's allocator instead of the C library's `malloc`.
//!
//! SQLite's page caches grow to `cache_size` per connection while a fan-out or an import runs
//! and shrink again; every pooled connection lives on a thread of its own, and glibc's `malloc`
//! gives each such thread an arena that keeps what was freed. Measured after a 1M-user fan-out
//! with inbox reads: glibc held 141 MB for the 20 MB SQLite still used, and `malloc_trim`
//! took the server from 324 to 188 MiB RSS. Rust's global allocator (mimalloc in the `herald`
//! binary) returns freed pages to the system.
//!
//! Each block carries its size in a 16-byte header (the allocator needs the layout back when
//! the block is freed, and SQLite asks a block's size for its memory statistics).
//!
//! The bundled SQLite is compiled without `SQLITE_ENABLE_MEMORY_MANAGEMENT`
//! (`.cargo/config.toml`): with it, all connections share one page cache group behind one
//! process-wide mutex taken on every page fetch and release, a tenth of the server's CPU
//! during a 1M-user fan-out (loadtest/README.md). Without it each connection's cache is its
//! own and unlocked.

use std::alloc::{alloc, dealloc, realloc, Layout};
use std::os::raw::{c_int, c_void};
use std::ptr::null_mut;

/// Room for the block's size, keeping SQLite's part 16-byte aligned.
const HEADER: usize = 16;
const ALIGN: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, ALIGN).ok()
}

/// # Safety
/// `base` is the start of a block made by [`x_malloc`] or [`x_realloc`].
unsafe fn stamp(base: *mut u8, size: usize) -> *mut c_void {
    base.cast::<usize>().write(size);
    base.add(HEADER).cast()
}

/// The block's start and size, from the pointer SQLite holds.
///
/// # Safety
/// `p` was returned by [`x_malloc`] or [`x_realloc`] and not freed.
unsafe fn base_of(p: *mut c_void) -> (*mut u8, usize) {
    let base = p.cast::<u8>().sub(HEADER);
    (base, base.cast::<usize>().read())
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    let Some(layout) = usize::try_from(n).ok().and_then(layout) else {
        return null_mut();
    };
    let base = alloc(layout);
    if base.is_null() {
        return null_mut();
    }
    stamp(base, layout.size() - HEADER)
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    let (base, size) = base_of(p);
    if let Some(layout) = layout(size) {
        dealloc(base, layout);
    }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    if p.is_null() {
        return x_malloc(n);
    }
    let (Ok(new_size), (base, size)) = (usize::try_from(n), base_of(p)) else {
        return null_mut();
    };
    let (Some(old), Some(_)) = (layout(size), layout(new_size)) else {
        return null_mut();
    };
    let moved = realloc(base, old, new_size + HEADER);
    if moved.is_null() {
        return null_mut();
    }
    stamp(moved, new_size)
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    c_int::try_from(base_of(p).1).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    n.saturating_add(7) & !7
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    libsqlite3_sys::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Once per process, before the first connection opens: SQLite allocates from the process's
/// allocator, and `/metrics` reports how much it holds. SQLite takes the setting only before it initialises; if something in this process
/// opened SQLite first (a test harness, an embedding program), it keeps the C library's
/// `malloc` and this says so at debug level.
pub(crate) fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let methods = libsqlite3_sys::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: null_mut(),
        };
        // SAFETY: SQLITE_CONFIG_MALLOC takes a pointer to a `sqlite3_mem_methods`, which
        // SQLite copies; the functions are thread-safe (the global allocator is) and never
        // unwind.
        let rc = unsafe {
            libsqlite3_sys::sqlite3_config(
                libsqlite3_sys::SQLITE_CONFIG_MALLOC,
                &methods as *const libsqlite3_sys::sqlite3_mem_methods,
            )
        };
        if rc != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialised before Herald's first store opened; it keeps malloc"
            );
        }
        if shared_page_cache() {
            tracing::warn!(
                "SQLite was built with ENABLE_MEMORY_MANAGEMENT: every connection's page cache \
                 shares one lock, a tenth of a large fan-out's CPU; build Herald from its \
                 repository directory (.cargo/config.toml sets LIBSQLITE3_FLAGS)"
            );
        }
        herald_core::metrics_catalog::on_scrape(|| {
            metrics::gauge!("herald_storage_sqlite_memory_bytes").set(used() as f64)
        });
    });
}

/// Whether the linked SQLite was compiled with `SQLITE_ENABLE_MEMORY_MANAGEMENT`, which puts
/// every connection's pages in one group behind one process-wide mutex.
fn shared_page_cache() -> bool {
    // SAFETY: reads a compile-time option by a NUL-terminated name.
    unsafe { libsqlite3_sys::sqlite3_compileoption_used(c"ENABLE_MEMORY_MANAGEMENT".as_ptr()) != 0 }
}

/// Bytes SQLite holds now (its page caches, statements, sorters): the gauge
/// `herald_storage_sqlite_memory_bytes`.
fn used() -> i64 {
    // SAFETY: a read of SQLite's own counter; thread-safe.
    unsafe { libsqlite3_sys::sqlite3_memory_used() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_keep_their_size_through_growth_and_shrinking() {
        unsafe {
            let p = x_malloc(100);
            assert!(!p.is_null());
            assert_eq!(p as usize % ALIGN, 0);
            assert_eq!(x_size(p), 100);
            std::ptr::write_bytes(p.cast::<u8>(), 0xab, 100);
            let q = x_realloc(p, 10_000);
            assert_eq!(x_size(q), 10_000);
            assert!(std::slice::from_raw_parts(q.cast::<u8>(), 100)
                .iter()
                .all(|b| *b == 0xab));
            let r = x_realloc(q, 8);
            assert_eq!(x_size(r), 8);
            x_free(r);
            x_free(null_mut());
            assert_eq!(x_size(null_mut()), 0);
            assert!(x_malloc(-1).is_null());
            assert_eq!(x_roundup(13), 16);
            assert_eq!(x_roundup(16), 16);
        }
    }

    #[test]
    fn the_bundled_sqlite_gives_each_connection_its_own_page_cache() {
        // Built with SQLITE_ENABLE_MEMORY_MANAGEMENT, SQLite puts every connection's pages in
        // one group behind one mutex; `.cargo/config.toml` compiles it out.
        assert!(
            !shared_page_cache(),
            "SQLite was built with ENABLE_MEMORY_MANAGEMENT"
        );
        // The check reads options that are there: one that libsqlite3-sys always sets.
        // SAFETY: reads a compile-time option by a NUL-terminated name.
        let fts5 = unsafe { libsqlite3_sys::sqlite3_compileoption_used(c"ENABLE_FTS5".as_ptr()) };
        assert_eq!(fts5, 1);
    }
}
